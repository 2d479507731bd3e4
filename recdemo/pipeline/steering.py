"""Steering: the user edits the taste profile (removes a keyword, adds one, rewrites the sentence)
and reruns.

The edited profile is what the reranker receives (PALR reads it in its prompt). Most rankers do not
read a profile at all (``score``, ``tallrec``, ``genrec``), so an edit would change nothing there;
``lift`` makes every edit visible the same way for every ranker: a candidate that matches a keyword
the user added moves up, one that matches only a keyword the user removed moves down. A match is
the profile's own grounding rule (shared attribute, title word or decade: ``llm.profile``), so each
move can be explained ("matches 'horror', which you added").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from recdemo.config import LimitsConfig
from recdemo.llm.profile import clean_keyword, first_sentences, ground, item_terms, keyword_terms
from recdemo.records import Keyword, Profile, RankedItem


@dataclass
class ProfileEdit:
    """What the user changed: the keyword list as they left it, and the sentence."""
    keywords: list[str]
    summary: str = ""

    @classmethod
    def of(cls, edit) -> "ProfileEdit":
        """From a ``ProfileEdit`` or a JSON dict ``{"keywords": [...], "summary": "..."}``."""
        if isinstance(edit, ProfileEdit):
            return edit
        if not isinstance(edit, dict):
            raise ValueError("A profile edit is {\"keywords\": [...], \"summary\": \"...\"}.")
        keywords = edit.get("keywords") or []
        if isinstance(keywords, str):
            keywords = [keywords]
        return cls([str(k) for k in keywords], str(edit.get("summary") or ""))


@dataclass
class Steer:
    """The difference between the profile the LLM wrote and the one the user sent."""
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    summary_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.summary_changed)


def edit_profile(catalog, history, base: Profile, edit: ProfileEdit,
                 max_keywords: int = LimitsConfig().max_profile_keywords) -> tuple[Profile, Steer]:
    """(the profile to send to the reranker, what changed). A kept keyword keeps its grounding; an
    added one is the user's word (``source="user"``, always sent to the ranker) with the history
    items that support it, if any. An empty sentence keeps the LLM's."""
    by_text = {k.text.lower(): k for k in base.keywords}
    keywords, seen = [], set()
    for text in edit.keywords:
        text = clean_keyword(text)
        if not text or text.lower() in seen:
            continue
        seen.add(text.lower())
        kept = by_text.get(text.lower())
        keywords.append(kept if kept is not None else
                        Keyword(text=text, support=ground(text, catalog, history), grounded=True, source="user"))
        if len(keywords) >= max_keywords:  # prompts stay short
            break
    summary = first_sentences(edit.summary) if edit.summary.strip() else base.summary
    steer = Steer(added=[k.text for k in keywords if k.source == "user"],
                  removed=[k.text for k in base.keywords if k.grounded and k.text.lower() not in seen],
                  summary_changed=summary.strip() != base.summary.strip())
    return Profile(keywords=keywords, summary=summary, prompt=base.prompt, raw=base.raw), steer


def reasons(catalog, item: int, steer: Steer) -> tuple[list[str], list[str]]:
    """(added keywords the item matches, removed keywords it matches)."""
    terms = item_terms(catalog, int(item))
    return ([k for k in steer.added if keyword_terms(k) & terms],
            [k for k in steer.removed if keyword_terms(k) & terms])


def lift(catalog, ranked: list[RankedItem], steer: Steer, k: int) -> tuple[list[RankedItem], dict[int, dict]]:
    """The top k after the edit: items matching an added keyword first, items matching only removed
    keywords last, the ranker's order within each group; and per moved-by-the-edit item
    ``{"lift": +1|-1, "added": [...], "removed": [...]}``."""
    info: dict[int, dict] = {}
    for r in ranked:
        plus, minus = reasons(catalog, r.index, steer)
        if plus or minus:
            info[int(r.index)] = {"lift": (1 if plus else 0) - (1 if minus and not plus else 0),
                                  "added": plus, "removed": minus}
    order = sorted(range(len(ranked)), key=lambda j: (-info.get(int(ranked[j].index), {}).get("lift", 0), j))
    return [ranked[j] for j in order][:k], info
