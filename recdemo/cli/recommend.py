"""`python -m recdemo recommend --history TITLE ...`: the whole pipeline for one history, as text or JSON."""
from __future__ import annotations

import json
import sys

from recdemo.pipeline.recommender import Recommender
from recdemo.records import Recommendation, jsonable


# -- CLI --
def cli_recommend(args, cfg) -> int:
    rec = Recommender.from_config(cfg)
    try:
        out = rec.recommend(args.history, ranker=cfg.llm.ranker, n_candidates=cfg.retrieval.n_candidates,
                            k=cfg.llm.n_results, adapter=cfg.llm.adapter)
    except ValueError as e:  # unknown titles, empty history, bad sizes: a sentence, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(jsonable(out.to_dict()), indent=1, ensure_ascii=False))
    else:
        print(format_text(out))
    return 0


def format_text(out: Recommendation, shown_candidates: int = 10) -> str:
    lines = [f"model: {out.model} · adapter: {out.adapter or 'none (base model)'} · ranker: {out.ranker}",
             "history: " + "; ".join(h["title"] for h in out.history), ""]
    titles = {h["index"]: h["title"] for h in out.history}
    if out.profile is not None:
        lines.append(f"PROFILE: {out.profile.summary}")
        for kw in out.profile.keywords:
            support = ", ".join(titles.get(i, str(i)) for i in kw.support[:4])
            more = f" +{len(kw.support) - 4} more" if len(kw.support) > 4 else ""
            tag = " (added from the history)" if kw.source == "heuristic" else ""
            if kw.grounded:
                lines.append(f"  [x] {kw.text}{tag}: {support}{more}")
            else:
                lines.append(f"  [ ] {kw.text}: not backed by the history")
        lines.append("")
    lines.append(f"SASREC CANDIDATES (top {min(shown_candidates, len(out.candidates))} of {len(out.candidates)}):")
    for c in out.candidates[:shown_candidates]:
        lines.append(f"  {c['rank']:>3}. {c['title']}  [{', '.join(c['attributes'])}]  {c['score']:.3f}")
    lines += ["", f"TOP {len(out.results)} ({out.ranker}):"]
    for r in out.results:
        if r["retrieval_rank"] is None:
            move = "not in SASRec's list"
        else:
            move = f"SASRec #{r['retrieval_rank']}, " + (f"up {r['move']}" if r["move"] > 0 else
                                                         f"down {-r['move']}" if r["move"] < 0 else "same")
        lines.append(f"  {r['rank']:>3}. {r['title']}  ({move})")
        for e in r["evidence"]:
            what = (f"{e['value']} users had both" if e["kind"] == "co-occurrence"
                    else f"similar, {e['value']:.2f}")
            lines.append(f"        <- {e['title']} ({what})")
        if r["rationale"]:
            tag = "" if r["rationale_source"] == "llm" else "  [template]"
            lines.append(f"        {r['rationale']}{tag}")
    lines += ["", "timings: " + " · ".join(f"{s} {v:.2f} s" for s, v in out.timings.items())]
    lines += [f"warning: {w}" for w in out.warnings]
    return "\n".join(lines)
