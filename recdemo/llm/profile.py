"""PALR step 1: a short taste profile (keywords + one sentence) written by the LLM, every keyword
checked against the history.

Grounding: a keyword is supported by the history items whose attributes or title words share a
word with it, compared after lower-casing, hyphen joining, a small stem rule ("animated" ~
"Animation", "comedies" ~ "Comedy") and a few synonyms ("science fiction" ~ "Sci-Fi"); "1990s"
is supported by titles from that decade. Unsupported keywords are KEPT with ``grounded=False`` (the
UI shows them struck through; ``prompts.format_profile`` leaves them out of ranker prompts). When
the LLM gives fewer than 2 grounded keywords, the most frequent attributes (or title words) of the
history are added with ``source="heuristic"``.
"""
from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field


from recdemo.data.catalog import natural_title
from recdemo.records import Keyword, Profile
from recdemo.llm.service import Generation
from recdemo.llm import prompts as P

STOPWORDS = frozenset(
    "a an and the of with for to in on at by from or as is are its it this that their they user users "
    "movie movies film films product products item items story stories genre genres fan fans lover lovers "
    "packed elements element touch mix style type types like likes enjoy enjoys taste kind kinds "
    "oz fl ml ounce ounces fluid pack count piece pieces size set new inch women men best free "
    "professional natural black white color colors anti".split())
SYNONYMS = {  # keyword word -> the attribute word it means (compared after stemming)
    "science": "scifi", "scifi": "scifi", "sf": "scifi", "cartoon": "animation", "cartoons": "animation",
    "anime": "animation", "kids": "children", "kid": "children", "child": "children", "family": "children",
    "funny": "comedy", "humor": "comedy", "humour": "comedy", "humorous": "comedy", "scary": "horror",
    "suspense": "thriller", "suspenseful": "thriller", "love": "romance", "detective": "mystery",
    "historical": "history", "superhero": "action", "noir": "filmnoir", "doc": "documentary",
}
# Tone words a keyword may use, and the genres whose items back them ("dark" is backed by a Crime
# or Thriller item in the history). Compared after ``term``.
TONES = {
    "dark": ("crime", "thriller", "horror", "filmnoir", "noir", "mystery"),
    "gritty": ("crime", "war", "action", "western"), "violent": ("crime", "war", "action", "horror"),
    "tense": ("thriller", "horror", "mystery", "war"), "intense": ("thriller", "action", "war", "horror"),
    "suspenseful": ("thriller", "mystery", "horror"), "gripping": ("thriller", "mystery", "crime"),
    "lighthearted": ("comedy", "children", "animation", "musical"),
    "feelgood": ("comedy", "romance", "musical", "children"), "heartwarming": ("children", "romance", "animation"),
    "whimsical": ("fantasy", "animation", "children"), "quirky": ("comedy",), "witty": ("comedy",),
    "epic": ("adventure", "war", "fantasy"), "emotional": ("drama", "romance"), "futuristic": ("scifi",),
    "supernatural": ("fantasy", "horror"),
    "magical": ("fantasy", "children"), "fastpaced": ("action", "thriller"),
    "adventurous": ("adventure",), "thoughtful": ("drama", "documentary"), "realistic": ("drama", "documentary"),
}
TONE_NAMES = {"lighthearted": "light-hearted", "feelgood": "feel-good", "fastpaced": "fast-paced"}  # as shown
SUFFIXES = ("ations", "ation", "ated", "ating", "ates", "ities", "ity", "ical", "ous", "ies", "ied", "ing",
            "tic", "ers", "er", "ed", "es", "ic", "al", "ce", "s", "y", "e")
DECADE = re.compile(r"^(?:'|19|20)?(\d)0s$")
YEAR = re.compile(r"\((\d{4})\)\s*$")
MIN_GROUNDED = 2
MAX_GENRE_KEYWORDS = 3  # genre names the profile keeps (the UI shows them next to each title anyway)
MIN_DESCRIPTIVE = 2  # grounded keywords beyond genre names (era, tone, theme) a profile should hold
MAX_LLM_KEYWORDS = 4  # the keyword pass stops after this many (fewer tokens; genres come first)
# Title words that name no theme ("Part II", "Returns", "Collection").
THEME_STOPWORDS = frozenset("part episode chapter volume edition collection series returns return begins "
                            "rises".split())


def stem(word: str) -> str:
    """Crude suffix stripping, enough to match keyword and attribute forms ("animated"/"Animation")."""
    w = word.lower()
    for suffix in SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[: -len(suffix)]
    return w


def words(text: str) -> list[str]:
    """Lower-case word tokens; hyphenated words also appear joined ("sci-fi" -> sci, fi, scifi)."""
    text = str(text).lower()
    out = []
    for chunk in re.findall(r"[a-z0-9']+(?:-[a-z0-9']+)*", text):
        parts = [p.strip("'") for p in chunk.split("-") if p.strip("'")]
        out.extend(parts)
        if len(parts) > 1:
            out.append("".join(parts))
    return out


def term(word: str) -> str:
    return stem(SYNONYMS.get(word, word))


def keyword_terms(keyword: str) -> set[str]:
    """What a keyword can match: stems of its content words (synonyms mapped), or a decade tag."""
    terms = set()
    for w in words(keyword):
        m = DECADE.match(w)
        if m:
            terms.add(f"decade:{m.group(1)}")
        elif w in TONES:
            terms.add(f"tone:{w}")
        elif w not in STOPWORDS and not w.isdigit() and len(w) > 1:
            terms.add(term(w))
    return terms


def item_terms(catalog, index: int) -> set[str]:
    """Stems of an item's attribute and title words, plus its decade (from a "(1995)" title year)."""
    title = catalog.titles[index]
    terms = {term(w) for a in catalog.attributes[index] for w in words(a)}
    terms.update(term(w) for w in words(YEAR.sub("", title)) if w not in STOPWORDS and not w.isdigit())
    year = YEAR.search(title)
    if year:
        terms.add(f"decade:{year.group(1)[2]}")
    terms.update(f"tone:{tone}" for tone, genres in TONES.items() if any(term(g) in terms for g in genres))
    return terms


def is_attribute_keyword(keyword: str, catalog, history) -> bool:
    """Does ``keyword`` only repeat attribute names (genres) already shown next to each title?"""
    wanted = keyword_terms(keyword)
    attrs = {term(w) for i in history for a in catalog.attributes[int(i)] for w in words(a)}
    return bool(wanted) and wanted <= attrs


def descriptive_keywords(catalog, history, exclude: set[str] = frozenset(), n: int = 2) -> list[Keyword]:
    """Keywords beyond the genre names, each backed by at least two history items: the decade most
    of the history comes from ("1990s") and the tone its genres share most ("dark")."""
    hist = list(dict.fromkeys(int(h) for h in history))
    counts: Counter = Counter()
    for i in hist:
        counts.update(t for t in item_terms(catalog, i) if t.startswith(("decade:", "tone:")))
    out, kinds = [], set()
    order = [f"tone:{t}" for t in TONES]  # ties: decades by recency of the count, tones in TONES order
    for t, c in sorted(counts.items(), key=lambda tc: (-tc[1], order.index(tc[0]) if tc[0] in order else -1, tc[0])):
        kind, value = t.split(":", 1)
        if c < 2 or kind in kinds:
            continue
        text = TONE_NAMES.get(value, value) if kind == "tone" else f"{'19' if int(value) >= 3 else '20'}{value}0s"
        if text in exclude:
            continue
        kinds.add(kind)
        out.append(Keyword(text=text, support=ground(text, catalog, hist), grounded=True, source="heuristic"))
        if len(out) >= n:
            break
    return out


def ground(keyword: str, catalog, history) -> list[int]:
    """History items (distinct, oldest first) that support ``keyword``."""
    wanted = keyword_terms(keyword)
    if not wanted:
        return []
    return [i for i in dict.fromkeys(int(h) for h in history) if wanted & item_terms(catalog, i)]


def clean_keyword(text: str) -> str:
    """Strip bullets, numbering, markdown and quotes; '' when nothing word-like is left."""
    text = re.sub(r"[*_`#\"“”]+", "", str(text)).strip()
    text = re.sub(r"^(?:[-•–]+|\d+[.)]|[a-z][.)](?=\s))\s*", "", text).strip()
    text = re.sub(r"\s+", " ", text).strip(" .:;'-")
    if not re.search(r"[A-Za-z]", text) or len(text) > 40 or len(text.split()) > 4:
        return ""
    if text.lower() in ("keywords", "keyword", "summary", "none", "n/a"):
        return ""
    return text


def split_keywords(line: str, limit: int = 6) -> list[str]:
    seen, out = set(), []
    for part in re.split(r"[,;|/\n]|\s+-\s+|\s•\s", line):
        kw = clean_keyword(part)
        if kw and kw.lower() not in seen:
            seen.add(kw.lower())
            out.append(kw)
    return out[:limit]


def parse_profile(text: str) -> tuple[list[str], str]:
    """(keywords, summary) from an LLM answer that may ramble: markdown, bullets, missing lines."""
    text = re.sub(r"[*_`#]+", "", str(text or "")).replace("\r", "")
    lines = [ln.strip() for ln in text.split("\n")]
    keywords: list[str] = []
    summary = ""
    for i, line in enumerate(lines):
        m = re.match(r"^(?:[-•]\s*)?(key ?words?|tags|genres)\s*[:\-]\s*(.*)$", line, re.I)
        if m and not keywords:
            rest = m.group(2)
            if not rest.strip():  # keywords as a bullet list on the following lines
                bullets = []
                for nxt in lines[i + 1:]:
                    if not re.match(r"^(?:[-•–]|\d+[.)])\s*\S", nxt):
                        break
                    bullets.append(nxt)
                rest = "\n".join(bullets)
            keywords = split_keywords(rest)
        m = re.match(r"^(?:[-•]\s*)?(summary|profile|description)\s*[:\-]\s*(.*)$", line, re.I)
        if m and not summary:
            summary = " ".join([m.group(2)] + [x for x in lines[i + 1:i + 3] if x and ":" not in x[:15]])
    if not summary:  # no "Summary:" line: the first prose line that is not the keyword line
        prose = [ln for ln in lines if len(ln.split()) >= 4 and not re.match(r"^(key ?words?|tags)\b", ln, re.I)]
        summary = prose[0] if prose else ""
    return keywords, first_sentences(summary)


def repetitive(text: str) -> bool:
    """A word pair said twice, or a longer word said three times: a small model looping."""
    words_ = re.findall(r"[a-z']+", str(text).lower())
    pairs = list(zip(words_, words_[1:]))
    if len(pairs) != len(set(pairs)):
        return True
    counts = Counter(w for w in words_ if len(w) >= 4)
    return any(n >= 3 for n in counts.values())


def first_sentences(text: str, n: int = 2, max_chars: int = 300) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    parts = re.split(r"(?<=[.!?])\s+", text)
    out = " ".join(parts[:n]).strip()
    return out[:max_chars].rstrip() if len(out) > max_chars else out


# -- heuristic profile (no LLM): fine-tuning examples and the fallback --
def heuristic_keywords(catalog, history, n: int = 4, exclude: set[str] = frozenset()) -> list[Keyword]:
    """The history's most frequent attributes (else title words), most recent first among ties."""
    hist = [int(h) for h in history]
    counts: Counter = Counter()
    last: dict[str, int] = {}
    shown: dict[str, str] = {}
    has_attrs = any(catalog.attributes[i] for i in hist)
    for pos, i in enumerate(hist):
        if has_attrs:
            names = [a for a in catalog.attributes[i] if a and not a.startswith("(")]
        else:
            names = [w for w in words(YEAR.sub("", catalog.titles[i]))
                     if w not in STOPWORDS and len(w) > 2 and not any(c.isdigit() for c in w)]
        for name in dict.fromkeys(names):
            key = term(name.lower()) if not has_attrs else name.lower()
            counts[key] += 1
            last[key] = pos
            shown.setdefault(key, name)
    ranked = sorted(counts, key=lambda k: (-counts[k], -last[k]))
    if not has_attrs and any(counts[k] >= 2 for k in ranked):
        ranked = [k for k in ranked if counts[k] >= 2]  # one-off title words say little
    out = []
    for key in ranked:
        text = shown[key]
        if text.lower() in exclude:
            continue
        support = ground(text, catalog, hist)
        if support:
            out.append(Keyword(text=text, support=support, grounded=True, source="heuristic"))
        if len(out) >= n:
            break
    return out


def heuristic_profile(catalog, history, max_history: int = P.MAX_HISTORY) -> Profile:
    """Keywords = the most frequent attributes / title words of the last ``max_history`` items,
    grounded by construction; summary templated. Cheap enough for thousands of training examples."""
    hist = [int(h) for h in history][-max_history:]
    keywords = heuristic_keywords(catalog, hist)
    return Profile(keywords=keywords, summary=template_summary(catalog, hist, keywords))


def template_summary(catalog, history, keywords: list[Keyword]) -> str:
    if not history:
        return ""
    domain = P.domain_for(catalog)
    names = [k.text.lower() for k in keywords[:3]]
    what = (", ".join(names[:-1]) + " and " + names[-1]) if len(names) > 1 else (names[0] if names else "")
    recent = catalog.titles[int(history[-1])]
    if what:
        return f"The user mostly {domain.verb_past} {what} {domain.items}, most recently {recent}."
    return f"The user most recently {domain.verb_past} {recent}."


def build_keywords(catalog, history, llm_keywords: list[str]) -> list[Keyword]:
    """Ground the LLM's keywords; top up with heuristic ones when fewer than 2 are grounded. Genre
    names (shown next to each title already) are kept to ``MAX_GENRE_KEYWORDS``; when fewer than
    ``MIN_DESCRIPTIVE`` grounded keywords say more than that, the history's era, tone and a theme
    its titles share are added, each backed by at least two history items."""
    out = [Keyword(text=k, support=(s := ground(k, catalog, history)), grounded=bool(s)) for k in llm_keywords]
    grounded = sum(k.grounded for k in out)
    if grounded < MIN_GROUNDED:
        have = {k.text.lower() for k in out}
        supports = {tuple(k.support) for k in out if k.grounded}
        extra = [k for k in heuristic_keywords(catalog, history, n=6, exclude=have)
                 if tuple(k.support) not in supports]
        out.extend(extra[: max(MIN_GROUNDED + 1 - grounded, 0)])
    genre = [k for k in out if k.grounded and is_attribute_keyword(k.text, catalog, history)]
    out = [k for k in out if k not in genre[MAX_GENRE_KEYWORDS:]]
    descriptive = [k for k in out if k.grounded and k not in genre]
    if len(descriptive) < MIN_DESCRIPTIVE:
        have = {k.text.lower() for k in out}
        more = descriptive_keywords(catalog, history, exclude=have)
        more += theme_keywords(catalog, history, exclude=have | {k.text.lower() for k in more})
        out.extend(more[: MIN_DESCRIPTIVE + 1 - len(descriptive)])
    return out


def catalog_key(catalog) -> tuple:
    """A cache key for a catalog: its id plus what tells two catalogs apart when a freed one's id is
    reused (tests build many)."""
    titles = catalog.titles
    return id(catalog), len(titles), titles[0] if len(titles) else None, titles[-1] if len(titles) else None


_COMMON: dict[tuple, set[str]] = {}


def title_words(title: str) -> list[str]:
    """The words of a title that may name a theme, as written: 4+ letters, apostrophes and hyphens kept."""
    return re.findall(r"[A-Za-z][A-Za-z'-]{3,}", title)


def _common_title_terms(catalog) -> set[str]:
    """Title words in more than 1 of 500 titles: everyday words ("Good", "Man"), not a theme."""
    key = catalog_key(catalog)
    if key not in _COMMON:
        df: Counter = Counter()
        for t in catalog.titles:
            df.update({term(w.lower()) for w in title_words(t)})
        _COMMON[key] = {t for t, n in df.items() if n > max(5, len(catalog.titles) // 500)}
    return _COMMON[key]


def theme_keywords(catalog, history, exclude: set[str] = frozenset(), n: int = 1) -> list[Keyword]:
    """Names that at least two history titles start with, beyond genre names and stock words (a franchise,
    a series: "Harry Potter", "Star Trek", "Home Alone"; ``shared_phrase``), found from the title words
    most history items share: a lone "Harry" or "Trek" names nothing a person would call a taste. Product
    titles rarely qualify (a brand runs on into the product's name, and brand words are common)."""
    hist = list(dict.fromkeys(int(h) for h in history))
    genre_terms = {term(w) for i in hist for a in catalog.attributes[i] for w in words(a)}
    counts: Counter = Counter()
    shown: dict[str, str] = {}
    for i in hist:
        found = {}
        for w in title_words(YEAR.sub("", natural_title(catalog.titles[i]))):
            t = term(w.lower())
            if w.lower() not in STOPWORDS | THEME_STOPWORDS and t not in genre_terms:
                found.setdefault(t, w)
        counts.update(found.keys())
        for t, w in found.items():
            shown.setdefault(t, w)
    out = []
    common = _common_title_terms(catalog)
    for t, c in counts.most_common():
        if c < 2 or shown[t].lower() in exclude or t in common:
            continue
        text, support = shared_phrase(catalog, hist, t)
        if len(support) >= 2 and text.lower() not in exclude | {k.text.lower() for k in out}:
            out.append(Keyword(text=text, support=support, grounded=True, source="heuristic"))
        if len(out) >= n:
            break
    return out


MAX_PHRASE_WORDS = 5  # "Lord of the Rings", "Smokey and the Bandit": longer shared runs are whole titles
PHRASE_BREAK = re.compile(r"\s*[:;,()\[\]/|\u2013\u2014]\s*|\s+-\s+")  # a phrase never crosses these
ARTICLES = frozenset("the a an le la les el il der die das".split())  # may stand before a name
# a sequel's number ends a phrase: "Star Trek II", "Home Alone 2", "Ocean's Eleven"
NUMERAL = re.compile(r"^(?:\d+|[ivx]+|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen)$")


def title_runs(title: str, word_term: str) -> dict[tuple, tuple[tuple, bool]]:
    """The phrases of ``title`` (as people say it, year dropped) around a word whose term is ``word_term``:
    runs of at most ``MAX_PHRASE_WORDS`` words that start one part of the title (punctuation splits it),
    after an article if any ("The Matrix"; a franchise or a brand comes first: "Romancing the Stone" and
    "The Sword in the Stone" share no name), with no stock word at their end. The run's word terms
    ("Alien" and "Aliens" match) -> (the run as written, whether it also ends a name: the word after it,
    if any, is a stock word or a numeral; "Harry Potter" of "Harry Potter and the Deathly Hallows" does,
    "Harry Potter and the Deathly" does not)."""
    stock = STOPWORDS | THEME_STOPWORDS
    runs = {}
    for part in PHRASE_BREAK.split(YEAR.sub("", natural_title(title))):
        ws = [_bare(w) for w in part.split() if re.search(r"\w|&", w)]
        low = [w.lower() for w in ws]
        terms = [term(w.removesuffix("'s")) for w in low]
        start = 1 if len(ws) > 1 and low[0] in ARTICLES else 0
        last = min(len(ws), start + MAX_PHRASE_WORDS)  # every run starts at ``start``: the first match bounds them
        at = next((j for j in range(start, last) if word_term in (terms[j], term(low[j]))), None)
        if at is None:
            continue
        for end in range(at + 1, last + 1):
            if low[end - 1] not in stock | {"&"}:
                ends = end == len(ws) or low[end] in stock or bool(NUMERAL.match(low[end]))
                key = tuple(terms[start:end])
                if ends or key not in runs:  # the form written where the name stands whole
                    runs[key] = (tuple(ws[start:end]), ends)
    return runs


def _bare(word: str) -> str:
    """A title word without the punctuation around it ("Airplane!" -> "Airplane"); an abbreviation keeps
    its last dot ("C.K.")."""
    bare = re.sub(r"^[^\w&]+|[^\w&.]+$", "", word)
    return bare if bare.count(".") > 1 else bare.rstrip(".")


def shared_phrase(catalog, history, word_term: str) -> tuple[str, list[int]]:
    """(the longest phrase around ``word_term`` (``title_runs``) that starts a name in at least two
    ``history`` titles and stands whole in one of them, a single word in two of them, the history items
    whose titles hold it); ties: the phrase more titles share; ("", []) when none. A word two titles
    merely both contain ("Hotel Rwanda", "The Grand Budapest Hotel") is no theme, nor one that is a
    whole title and starts another ("Seven", "Seven Samurai"); "Dark Knight" ("The Dark Knight", "The
    Dark Knight Rises") and "Shrek" ("Shrek", "Shrek 2") are."""
    holders: dict[tuple, list[int]] = {}
    written: dict[tuple, tuple] = {}
    whole: Counter = Counter()  # phrase -> titles where it stands whole
    for i in history:
        for key, (run, ends) in title_runs(catalog.titles[i], word_term).items():
            holders.setdefault(key, []).append(i)
            if key not in written or (ends and not whole[key]):  # the first form standing whole:
                written[key] = run  # "Monty Python" (and the Holy Grail), not "Monty Python's" (Life of Brian)
            whole[key] += ends
    shared = [k for k, items in holders.items() if len(items) >= 2 and whole[k] >= (1 if len(k) > 1 else 2)]
    if not shared:
        return "", []
    best = max(shared, key=lambda k: (len(k), len(holders[k])))
    return " ".join(written[best]), holders[best]


class ProfileGenerator:
    """``generate(history) -> Profile`` with the LLM (base model unless ``adapter`` is given), cached
    per (last 20 items, model, adapter). Two short greedy passes sharing the prompt's KV cache:
    the keyword line (stopped after 6 items, a repeat, or a newline), then one summary sentence."""

    def __init__(self, service, catalog, max_history: int = P.MAX_HISTORY, keyword_tokens: int = 24,
                 summary_tokens: int = 28, cache_size: int = 512, max_title_words: int = 12):
        self.service, self.catalog, self.max_history = service, catalog, max_history
        self.max_title_words = max_title_words  # long product names would make the prompt slow
        self.domain = P.domain_for(catalog)
        self.keyword_tokens, self.summary_tokens = keyword_tokens, summary_tokens
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size
        # concurrent requests' profiles (same adapter) are written in one batch: see _write_batch
        self._writes = service.coalescer(self._write_batch, service.cfg.coalesce_rows)

    def prompt(self, history) -> str:
        """The profile prompt for the newest history items that fit the model's context, leaving room
        for both passes of ``_write`` (keyword line, its cleaned copy, summary)."""
        llm = self.service.llm
        tok = llm.tokenizer

        def text(hist):
            return P.render_profile(tok, self.domain, P.format_history(
                self.catalog, hist, self.max_history, with_attributes=True, max_title_words=self.max_title_words))
        reserve = 2 * self.keyword_tokens + self.summary_tokens + 16  # + the summary prefix and separators
        hist = [int(h) for h in history][-self.max_history:]
        kept, _ = P.fit_to_context(lambda h: tok(text(h), add_special_tokens=False)["input_ids"], hist,
                                   P.context_limit(llm) - reserve)
        return text(kept)

    def generate(self, history, adapter: str | None = None) -> Profile:
        draft = self.draft(history, adapter)
        if draft.profile is not None:
            return draft.profile
        return self._build(draft, self._writes.submit(adapter, draft.prompt))

    def draft(self, history, adapter: str | None = None) -> "ProfileDraft":
        """A profile to be written: ``.profile`` when there is nothing to write (cached, no history),
        else ``.keywords``, the keyword pass as a ``Generation`` a caller may run in a call it shares
        (the pipeline merges it into the explanations' batch), then ``finish`` writes the summary."""
        hist = [int(h) for h in history][-self.max_history:]
        if not hist:
            return ProfileDraft(hist, None, profile=Profile(keywords=[], summary=""))
        key = (tuple(hist), self.service.llm.name, adapter)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return ProfileDraft(hist, key, profile=self._cache[key])
        prompt = self.prompt(hist)
        tok = self.service.llm.tokenizer
        ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
        # The summary row cannot wait for the keyword row in a shared call, so it continues the
        # history's own grounded keywords (its most frequent attributes) instead of the model's line.
        grounded = ", ".join(k.text for k in heuristic_keywords(self.catalog, hist))
        return ProfileDraft(hist, key, prompt, ids, keywords=self.keyword_pass([ids]),
                            summary=self.summary_pass(tok, [ids], [grounded]))

    def finish(self, draft: "ProfileDraft", keyword_text: str | None, adapter: str | None = None,
               summary_text: str | None = None) -> Profile:
        """The profile from the keyword pass's text (``draft.keywords`` run elsewhere) and, when
        ``draft.summary`` ran in the same call, its ``summary_text``; else the summary pass runs here
        (its own small call, continuing the cached KV of the prompt). Then parsed and grounded.
        Without the keyword text (the shared call failed) the profile is written as ``generate`` writes it."""
        if draft.profile is not None:
            return draft.profile
        if keyword_text is None:
            return self._build(draft, self._writes.submit(adapter, draft.prompt))
        line = keyword_text.split("\n")[0]
        if summary_text is None:
            tok = self.service.llm.tokenizer
            summary_text = self.service.run([self.summary_pass(tok, [draft.ids], [line])], adapter)[0][0]
        return self._build(draft, self._answer(line, summary_text))

    def _build(self, draft: "ProfileDraft", raw: str) -> Profile:
        """Parse, ground and cache the model's answer."""
        hist = draft.history
        llm_keywords, summary = parse_profile(raw)
        keywords = build_keywords(self.catalog, hist, llm_keywords)
        if len(summary.split()) < 3 or repetitive(summary) or self._copied_example(summary):
            summary = template_summary(self.catalog, hist, [k for k in keywords if k.grounded])
        profile = Profile(keywords=keywords, summary=summary, prompt=draft.prompt, raw=raw)
        with self._cache_lock:
            self._cache[draft.key] = profile
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return profile

    # -- the two passes (one definition for ``_write`` and for a caller's shared call) --
    def keyword_pass(self, ids: list[list[int]]) -> Generation:
        """Pass 1: the keyword line. A small model loops ("adventure, adventure, ..."): stop early."""
        return Generation(ids, self.keyword_tokens, stop_when=keyword_line_done)

    def summary_pass(self, tok, ids: list[list[int]], lines: list[str]) -> Generation:
        """Pass 2: the prompt, then the cleaned keyword line and the summary's start; the decoder's
        prefix cache holds pass 1's prompt KV, so only the added tokens are prefilled."""
        tails = [f" {', '.join(split_keywords(line))}\n{P.PROFILE_SUMMARY_PREFIX}" for line in lines]
        rows = [row + tok(tail, add_special_tokens=False)["input_ids"] for row, tail in zip(ids, tails)]
        return Generation(rows, self.summary_tokens, stop_when=summary_done)

    @staticmethod
    def _answer(line: str, summary_text: str) -> str:
        sentence = summary_text.split("\n")[0]
        sentence = sentence[: sentence.find(".") + 1] if "." in sentence else sentence
        return f"{P.PROFILE_PREFIX}{line}\n{P.PROFILE_SUMMARY_PREFIX}{sentence}"

    def _copied_example(self, summary: str) -> bool:
        """The worked example's summary repeated word for word says nothing about this user."""
        example = P.PROFILE_EXAMPLES.get(self.domain.items, P.PROFILE_EXAMPLES["products"])[1]
        copied = example.split("Summary:", 1)[-1]
        return re.sub(r"\W+", " ", summary).strip().lower() == re.sub(r"\W+", " ", copied).strip().lower()

    def _write_batch(self, adapter: str | None, prompts: list[str]) -> list[str]:
        """The coalescer's batch: several prompts (concurrent requests) share each pass's decoder call."""
        with self.service.use_adapter(adapter) as llm:
            return self._write(llm, prompts)

    def _write(self, llm, prompts: list[str]) -> list[str]:
        """Each prompt's answer text: PROFILE_PREFIX + keyword line + newline + PROFILE_SUMMARY_PREFIX +
        sentence (one prompt is written exactly as alone)."""
        tok, decoder = llm.tokenizer, self.service.decoder
        ids = [list(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        firsts = decoder.generate(llm, ids, stops=[self.keyword_pass(ids).stop] * len(ids))
        lines = [tok.decode(new, skip_special_tokens=True).split("\n")[0] for new in firsts]
        second = self.summary_pass(tok, ids, lines)
        seconds = decoder.generate(llm, second.rows, stops=[second.stop] * len(ids))
        return [self._answer(line, tok.decode(new, skip_special_tokens=True)) for line, new in zip(lines, seconds)]


@dataclass
class ProfileDraft:
    """``ProfileGenerator.draft``: a finished ``profile``, or what writing one needs."""
    history: list[int]
    key: tuple | None
    prompt: str = ""
    ids: list[int] = field(default_factory=list)
    keywords: Generation | None = None  # the keyword pass, for the caller to run
    summary: Generation | None = None  # the summary pass after the history's grounded keywords, to run beside it
    profile: Profile | None = None


def summary_done(text: str) -> bool:
    """Stop the summary pass at its first full stop or newline."""
    return "." in text or "\n" in text


def keyword_line_done(text: str) -> bool:
    """Stop the keyword pass at a newline, after ``MAX_LLM_KEYWORDS`` items, at a repeated item, or
    when it runs long."""
    if "\n" in text.strip() or len(text) > 160:
        return True
    done = [x.strip().lower() for x in text.split(",")[:-1]]
    return len(done) >= MAX_LLM_KEYWORDS or len(set(done)) < len(done)
