"""Plain data passed along the pipeline (and returned to the app / CLI as JSON)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Candidate:
    index: int  # catalog index
    score: float  # SASRec (or fallback) score
    rank: int  # 1-based rank in the retrieval list


@dataclass
class Keyword:
    text: str
    support: list[int]  # catalog indices of history items that back the keyword
    grounded: bool  # False: the LLM said it but nothing in the history supports it
    source: str = "llm"  # "llm", or "heuristic": added from the history's attributes (LLM gave < 2 grounded)


@dataclass
class Profile:
    keywords: list[Keyword]
    summary: str
    prompt: str = ""
    raw: str = ""  # the LLM's raw output


@dataclass
class RerankRequest:
    history: list[int]  # catalog indices, oldest first (the full history; prompts take the last 20)
    candidates: list[Candidate]  # SASRec top-N; genrec ignores them and ranks the catalog
    profile: Profile | None
    k: int = 10


@dataclass
class RankedItem:
    index: int
    llm_score: float  # the ranker's own score (log-prob, P(yes), ...)
    score: float  # after fusion with SASRec (equals llm_score when not fused)
    retrieval_rank: int | None  # rank in the SASRec list, None when outside it (genrec)


@dataclass
class Explanation:
    index: int
    evidence: list[dict]  # [{"history_index": i, "title": ..., "kind": "co-occurrence"|"similar", "value": x}]
    rationale: str
    rationale_source: str = "llm"  # "template": the LLM's sentence failed a claim check (llm/claims.py)
    llm_rationale: str = ""  # the LLM's sentence as written (kept when it was replaced, for inspection)
    failed_checks: list[str] = field(default_factory=list)  # the checks the LLM's sentence failed
    repair: str = ""  # how a failing LLM sentence was made to pass ("trimmed to its last whole clause")


@dataclass
class Recommendation:
    """What `Recommender.recommend` returns: everything the UI shows."""
    history: list[dict]
    profile: Profile | None
    candidates: list[dict]  # [{"rank", "index", "id", "title", "attributes", "score"}]
    results: list[dict]  # [{"rank", "index", "id", "title", "attributes", "score", "retrieval_rank",
    #                        "move", "evidence", "rationale"}]
    prompt: str
    timings: dict[str, float]  # seconds per stage: retrieval, profile, rerank, explain, total
    ranker: str
    model: str  # e.g. "smollm2-135m on cpu (float32)"
    adapter: str | None
    warnings: list[str] = field(default_factory=list)
    # Which stage this state ends (``Recommender.recommend_stages``): "retrieval" (SASRec's order,
    # provisional), "profile", "rerank", "explain" (more cards explained), "done" (the final answer);
    # the profile comes before "rerank" only for rankers that read it (palr) and steered reruns.
    stage: str = "done"

    def to_dict(self) -> dict:
        return asdict(self)


def jsonable(obj):
    """``obj`` as plain JSON types (dict, list, str, float, int, bool, None): numpy scalars and
    arrays become numbers and lists, tuples lists, objects their fields; anything else its str.
    The app's pages and API and the CLI's --json all go through here, so they agree."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(o):
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "__dict__"):
        return vars(o)
    return str(o)
