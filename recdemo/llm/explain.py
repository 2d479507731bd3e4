"""Why each recommended item: evidence from the history, and one LLM sentence checked against it.

Evidence for item r and each of the last 20 history items h:
- co-occurrence: training users who have both r and h (ItemKNN counts, training sequences only);
- similarity: cosine of the text embeddings (content) and of SASRec's item embeddings (behaviour).
The 2-3 strongest history items are kept. The rationale for all items is ONE batched generate
call (left padding, greedy, short), primed with the evidence titles. It is verified: every quoted
or capitalised title-like span must belong to a history title, the target's title or an
attribute; otherwise (or when empty) a templated sentence built from the evidence replaces it,
and ``rationale_source`` says "template".
"""
from __future__ import annotations

import re
import threading

import numpy as np

from recdemo.data.catalog import natural_title, normalize_title, title_variants
from recdemo.records import Explanation
from recdemo.llm import prompts as P
from recdemo.llm.profile import repetitive

CONNECTORS = {"of", "the", "a", "an", "de", "la", "le"}  # inside a title-like span ("Lord of the Rings");
# "and" splits spans, so "Toy Story and Shrek" is checked as two titles (each part of a title still passes)
DANGLING = CONNECTORS | {"and", "or", "in", "to", "on", "for", "from", "with", "at", "that", "is", "are", "was",
                         "which", "who", "its", "&"}
HARMLESS = {"i", "they", "the", "a", "an", "this", "it", "its", "like", "both", "but", "and", "as", "if",
            "because", "since", "while", "with", "you", "your", "user", "users", "fans", "fan"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s")
META = re.compile(r"\b(sentences?|titles?|names?|listed|recommendations?|in common with them|as an ai)\b", re.I)


def short_title(title: str, max_words: int = 8) -> str:
    """"Toy Story (1995)" -> "Toy Story"; "Matrix, The (1999)" -> "The Matrix"; "Men in Black (a.k.a. MIB)"
    -> "Men in Black"; a product name is cut at its first comma/dash when long or followed by a size
    ("Herstyler Conditioner,6.4 Ounce (Pack of 2)" -> "Herstyler Conditioner"), then to ``max_words``."""
    text = re.sub(r"\s*\(\d{4}\)\s*$", "", natural_title(title)).strip() or title
    long = len(text.split()) > max_words
    bare = re.sub(r"\s*\([^()]*\)", "", text).strip()
    text = bare if len(bare) >= 2 else text
    parts = re.split(r"\s*(?:,|\s-\s|\[|\|)\s*", text, maxsplit=1)
    if len(parts) == 2 and len(parts[0].split()) >= 2 and (long or re.match(r"\d", parts[1])):
        text = parts[0]
    return " ".join(text.split()[:max_words])


def _norm(text: str) -> str:
    return f" {normalize_title(text)} "


class RationaleChecker:
    """Is every title-like span of a sentence one of the allowed titles (or an attribute)?"""

    def __init__(self, titles: list[str], attributes=(), domain_words=()):
        texts = set()
        for t in titles:
            texts.update([t, short_title(t), *title_variants(t)])
        self.titles = [_norm(t) for t in texts if normalize_title(t)]
        self.words = {normalize_title(a) for a in list(attributes) + list(domain_words) if normalize_title(a)}

    def allowed(self, span: str) -> bool:
        key = normalize_title(span)
        words = key.split()
        while words and (words[0] in HARMLESS or words[0] in CONNECTORS):  # "Fans of The Matrix"
            words = words[1:]
        if not words:
            return True
        key = " ".join(words)
        if key in self.words or all(w in self.words or w in HARMLESS for w in words):
            return True
        return any(f" {key} " in t for t in self.titles)

    def problems(self, sentence: str) -> list[str]:
        """The spans that name something outside the allowed titles (empty list: the sentence is fine)."""
        bad = []
        quoted = re.findall(r'"([^"]+)"|“([^”]+)”', sentence)
        for a, b in quoted:
            if not self.allowed(a or b):
                bad.append(a or b)
        rest = re.sub(r'"[^"]*"|“[^”]*”', " | ", sentence)
        for span, at_start in capitalised_spans(rest):
            if at_start and len(span.split()) == 1:
                continue  # an ordinary sentence start ("They", "Since")
            if not self.allowed(span):
                bad.append(span)
        return bad


def capitalised_spans(text: str) -> list[tuple[str, bool]]:
    """Runs of Capitalised words (connectors like "of the" allowed inside), with whether the run
    starts a sentence."""
    tokens = re.findall(r"[A-Za-z0-9][\w'’:-]*|[.!?|,;()]", text)
    spans, run, start, at_start = [], [], False, True
    for tok in tokens + ["."]:
        if tok in ".!?|,;()":  # punctuation (and a removed quote, "|") ends a run
            if run:
                spans.append((run, start))
            run, at_start = [], tok in ".!?"
            continue
        if tok[0].isupper() or (run and tok[0].isdigit()):
            if not run:
                start = at_start
            run.append(tok)
        elif run and tok.lower() in CONNECTORS:
            run.append(tok)
        else:
            if run:
                spans.append((run, start))
            run = []
        at_start = False
    out = []
    for words, start in spans:
        while words and words[-1].lower() in CONNECTORS:
            words = words[:-1]
        if words:
            out.append((" ".join(words).strip(":"), start))
    return out


class Explainer:
    """``explain(history, items) -> list[Explanation]`` (see module doc)."""

    def __init__(self, service, dataset, retriever=None, text_index=None, knn=None, max_history: int = 20,
                 n_evidence: int = 3, max_new_tokens: int = 16, use_llm: bool = True):
        self.service, self.dataset, self.catalog = service, dataset, dataset.catalog
        self.retriever, self.text_index, self._knn = retriever, text_index, knn
        self.domain = P.domain_for(self.catalog)
        self.max_history, self.n_evidence = max_history, n_evidence
        self.max_new_tokens, self.use_llm = max_new_tokens, use_llm
        self._sasrec = None
        self._lock = threading.Lock()
        self.last_prompts: list[str] = []  # of the latest call (for the bench and the UI's prompt view)

    # -- evidence --
    @property
    def knn(self):
        with self._lock:
            if self._knn is None:
                from recdemo.retrieval.baselines import ItemKNN
                self._knn = ItemKNN.for_dataset(self.dataset)  # training sequences: no leak of test items
            return self._knn

    def _sasrec_embeddings(self) -> np.ndarray | None:
        with self._lock:
            if self._sasrec is None and getattr(self.retriever, "item_embeddings", None) is not None:
                emb = np.asarray(self.retriever.item_embeddings, dtype=np.float32)
                self._sasrec = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            return self._sasrec

    def evidence(self, history, item: int) -> list[dict]:
        """The ``n_evidence`` history items most related to ``item``, strongest first."""
        recent = list(dict.fromkeys(int(h) for h in history[-self.max_history:] if int(h) != int(item)))
        if not recent:
            return []
        knn = self.knn
        co = knn.cooccurrence(int(item))[recent].astype(np.float64)
        text = (self.text_index.embeddings[recent] @ self.text_index.embeddings[int(item)]
                if self.text_index is not None else np.zeros(len(recent)))
        sas_emb = self._sasrec_embeddings()
        sas = sas_emb[recent] @ sas_emb[int(item)] if sas_emb is not None else np.zeros(len(recent))
        # Rank by co-occurrence relative to popularity (cosine of the two user sets: a blockbuster in
        # the history co-occurs with everything and would otherwise explain every item), plus both
        # similarities. The raw count is what the user is shown.
        counts = np.asarray(knn.user_counts, dtype=np.float64)
        cosine = co / np.sqrt(np.maximum(counts[recent] * counts[int(item)], 1.0))
        strength = cosine / max(cosine.max(), 1e-9) + 0.5 * text + 0.5 * sas
        order = np.argsort(-strength, kind="stable")[: self.n_evidence]
        out = []
        for j in order:
            h = recent[int(j)]
            if co[j] >= 1:
                kind, value = "co-occurrence", int(co[j])
            else:
                kind, value = "similar", round(float(text[j] if self.text_index is not None else sas[j]), 3)
            out.append({"history_index": h, "title": self.catalog.titles[h], "kind": kind, "value": value,
                        "co_occurrence": int(co[j]), "text_similarity": round(float(text[j]), 3),
                        "sasrec_similarity": round(float(sas[j]), 3),
                        "shared_attributes": [a for a in self.catalog.attributes[int(item)]
                                              if a in self.catalog.attributes[h]]})
        return out

    # -- rationales --
    def template(self, item: int, evidence: list[dict]) -> str:
        """A sentence built from the evidence alone (used when the LLM's is empty or unfaithful)."""
        target = short_title(self.catalog.titles[int(item)])
        if not evidence:
            return f'"{target}" is popular with people whose {self.domain.items} look like yours.'
        e = evidence[0]
        first = short_title(e["title"])
        verb = self.domain.verb_past
        if e["kind"] == "co-occurrence":
            n = e["value"]
            text = f'{n} user{"s" if n != 1 else ""} who {verb} "{first}" also {verb} "{target}"'
        else:
            text = f'"{target}" is close in content to "{first}", which you {verb}'
        shared = e.get("shared_attributes") or []
        if shared:
            text += f" (both {', '.join(a.lower() for a in shared[:2])})"
        if len(evidence) > 1:
            text += f', and it fits "{short_title(evidence[1]["title"])}" too'
        return text + "."

    def checker(self, history, item: int) -> RationaleChecker:
        titles = [self.catalog.titles[int(h)] for h in history] + [self.catalog.titles[int(item)]]
        attrs = {a for h in list(history) + [item] for a in self.catalog.attributes[int(h)]}
        return RationaleChecker(titles, attrs, (self.domain.item, self.domain.items))

    def explain(self, history, items, adapter: str | None = None, use_llm: bool | None = None) -> list[Explanation]:
        """``use_llm=False``: evidence and templated sentences only (no model call)."""
        history = [int(h) for h in history]
        evidence = [self.evidence(history, int(i)) for i in items]
        use_llm = self.use_llm if use_llm is None else use_llm
        drafts = self._generate(items, evidence, adapter) if (use_llm and items) else [("", "")] * len(items)
        out = []
        for item, ev, (prefix, tail) in zip(items, evidence, drafts):
            tail = tidy(tail)  # the primed prefix may hold "Mr." or "a.k.a.": only the tail is cut
            sentence = (prefix + ("" if tail[:1] in ",.;:!?'" else " ") + tail).strip()
            problems = self.checker(history, item).problems(sentence) if tail else ["empty"]
            if len(re.findall(r"\w+", tail)) < 3:  # the model added (almost) nothing to the primed start
                problems = problems or ["too short"]
            if META.search(tail):  # it talks about the task ("not listed", "a product recommendation")
                problems = problems or ["about the task, not the item"]
            if repetitive(tail):  # "is a product that is a product that ..."
                problems = problems or ["repetitive"]
            if problems:
                out.append(Explanation(int(item), ev, self.template(item, ev), rationale_source="template",
                                       llm_rationale=sentence))
            else:
                out.append(Explanation(int(item), ev, sentence, rationale_source="llm", llm_rationale=sentence))
        return out

    def prompt(self, item: int, evidence: list[dict]) -> tuple[str, str]:
        """(prompt ending with the primed answer, the primed part) for one item, its titles as prompts
        show them; the weakest evidence goes first when the prompt would not fit the context."""
        llm = self.service.llm
        target = P.prompt_title(short_title(self.catalog.titles[int(item)]))
        attributes = [P.prompt_title(a) for a in self.catalog.attributes[int(item)][:3]]
        titles = [P.prompt_title(short_title(e["title"])) for e in evidence[:2]]

        def build(kept):  # ``kept``: evidence titles weakest first, so fitting drops the weakest
            text, prefix = P.render_explain(llm.tokenizer, self.domain, kept[::-1], target, attributes)
            return text, prefix, llm.tokenizer(text)["input_ids"]
        if not titles:
            return P.render_explain(llm.tokenizer, self.domain, [], target, attributes)
        _, (text, prefix, _) = P.fit_to_context(build, titles[::-1], P.context_limit(llm) - self.max_new_tokens,
                                                size=lambda built: len(built[2]), what="evidence title")
        return text, prefix

    def _generate(self, items, evidence, adapter) -> list[tuple[str, str]]:
        """One batched greedy call for every item: prompt + primed prefix -> the sentence's end."""
        prompts, prefixes = [], []
        for item, ev in zip(items, evidence):
            text, prefix = self.prompt(item, ev)
            prompts.append(text)
            prefixes.append(prefix)
        self.last_prompts = prompts
        tails = self.service.generate(prompts, max_new_tokens=self.max_new_tokens, stop_strings=["\n", ". "],
                                      adapter=adapter)
        return list(zip(prefixes, tails))


def tidy(sentence: str) -> str:
    """One sentence: cut at the first sentence end; a cut-off one loses its dangling connector words."""
    text = re.sub(r"\s+", " ", sentence or "").strip()
    if not text:
        return ""
    first = SENTENCE_END.split(text, maxsplit=1)[0].strip()
    if first[-1:] in ".!?":
        return first
    if "," in first and len(first.rsplit(",", 1)[0].split()) >= 4:  # cut off mid-clause: drop that clause
        first = first.rsplit(",", 1)[0]
    words = first.rstrip(",;:- ").split()
    while len(words) > 1 and words[-1].lower() in DANGLING:
        words.pop()
    return " ".join(words).rstrip(",;:- ") + "."
