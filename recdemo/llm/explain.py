"""Why each recommended item: evidence from the history, and one LLM sentence checked against it.

Evidence for item r and each of the last 20 history items h:
- co-occurrence: training users who have both r and h (ItemKNN counts, training sequences only);
- similarity: cosine of the text embeddings (content) and of SASRec's item embeddings (behaviour).
The 2-3 strongest history items are kept (the card shows them); the prompt states the facts of the
strongest one (``facts`` of them: ``LLMConfig.explain_facts``). The rationale for all items is ONE
batched generate call (greedy, up to ``max_new_tokens`` and stopped at the first sentence end); ``plan`` splits it
so the pipeline can share that call (with the profile's keyword line) and judge each row the
moment it finishes (``ExplainPlan.judge``), streaming the cards one by one. The prompt hands the
model the facts (who had both, the genres they share); the shown sentence starts with their titles
("Like ..."), then the item, and the model writes the connecting clause. Every claim of it is then
checked (``claims.ClaimChecker``: titles, genres, numbers, unbacked words, cut-off, empty); a failing
sentence is repaired when that passes (``repair``: a count corrected, an unbacked word dropped from what the
item is, cut back to its last whole clause), else the templated sentence built from
the evidence replaces it (``rationale_source`` "template"); ``failed_checks`` names what failed.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict

import numpy as np

from recdemo.config import LLMConfig
from recdemo.records import Explanation
from recdemo.llm import prompts as P
from recdemo.llm.claims import DANGLING, ClaimChecker, product_kind, short_title, what_it_is
from recdemo.llm.profile import STOPWORDS, repetitive

DONE = re.compile(r"[.!?][\"”)]?\s")  # a sentence end followed by more text: generation can stop
AN = re.compile(r"\b([Aa]) (?=[AEIOaeio](?!ne\b|nce\b)\w)")  # "a action" -> "an action" ("a one-off" stays)
CLAUSE_DANGLING = DANGLING | {"both"}  # a trimmed clause may not end on these: "..., like both" says nothing
META = re.compile(r"\b(sentences?|titles?|names?|listed|recommendations?|in common with them|as an ai)\b", re.I)


class Explainer:
    """``explain(history, items) -> list[Explanation]`` (see module doc)."""

    def __init__(self, service, dataset, retriever=None, text_index=None, knn=None, max_history: int = 20,
                 n_evidence: int = 3, max_new_tokens: int = LLMConfig().explain_new_tokens, use_llm: bool = True,
                 facts: int = LLMConfig().explain_facts, cache_rows: int = 0):
        self.service, self.dataset, self.catalog = service, dataset, dataset.catalog
        self.retriever, self.text_index, self._knn = retriever, text_index, knn
        self.domain = P.domain_for(self.catalog)
        self.max_history, self.n_evidence = max_history, n_evidence
        self.max_new_tokens, self.use_llm = max_new_tokens, use_llm
        self.facts = facts  # evidence lines (and lead titles) the prompt shows, strongest first
        self._sasrec = None
        self._lock = threading.Lock()
        # the model's tail per (model, adapter, prompt): a prompt holds the item and its evidence only, so
        # other users' rows and reruns repeat it (``cache_rows``: how many are kept; 0: none)
        self.cache_rows, self._tails, self._tails_lock = cache_rows, OrderedDict(), threading.Lock()
        self.cache_hits = 0  # rows answered from the cache so far
        self.last_prompts: list[str] = []  # of the latest call (for the bench and the UI's prompt view)
        self.last_tails: list[str] = []  # what the model wrote after each primed start (the bench counts them)

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

    def fact_lines(self, item: int, evidence: list[dict]) -> list[str]:
        """One prompt line per evidence item, from the data only: what it shares with ``item`` (genres,
        or for a catalog without them the words both titles hold) and the users who had both."""
        return [P.explain_fact(self.domain, P.prompt_title(short_title(e["title"])), self.shared(item, e)[:3],
                               int(e["co_occurrence"])) for e in evidence]

    def shared(self, item: int, e: dict) -> list[str]:
        """What ``item`` and evidence item ``e`` have in common: their shared attributes (lower case),
        else (a catalog without attributes: products) the content words both short titles hold."""
        if self.catalog.attributes[int(item)] or e.get("shared_attributes"):
            return [a.lower() for a in e.get("shared_attributes") or []]
        mine = {w.lower(): w for w in re.findall(r"[A-Za-z][A-Za-z'-]+", short_title(self.catalog.titles[int(item)]))}
        theirs = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]+", short_title(e["title"]))}
        return [w.lower() for k, w in mine.items() if k in theirs and k not in STOPWORDS and len(k) > 2]

    def checker(self, history, item: int, evidence=()) -> ClaimChecker:
        return ClaimChecker.for_item(self.catalog, history, item, evidence,
                                     (self.domain.item, self.domain.items))

    def explain(self, history, items, adapter: str | None = None, use_llm: bool | None = None) -> list[Explanation]:
        """``use_llm=False``: evidence and templated sentences only (no model call)."""
        return self.explain_many([(history, items)], adapter, use_llm)[0]

    def explain_many(self, requests, adapter: str | None = None, use_llm: bool | None = None) -> list[list[Explanation]]:
        """``explain`` for several (history, items) pairs (users) at once: ONE batched generate call for
        every row of every pair, so the rows share the model's work and the prompts' common prefix."""
        plan = self.plan(requests, use_llm, adapter)
        found = dict(plan.cached())
        if plan.todo:
            tails = self.service.generate(plan.todo_prompts(), max_new_tokens=self.max_new_tokens,
                                          stop_strings=["\n"], stop_when=sentence_done, adapter=adapter)
            for i, tail in enumerate(tails):
                found.update(plan.judge(i, tail))
        found = [found[row] for row in range(len(plan.rows))]
        out, at = [], 0
        for _, items in plan.requests:
            out.append(found[at:at + len(items)])
            at += len(items)
        return out

    def plan(self, requests, use_llm: bool | None = None, adapter: str | None = None) -> "ExplainPlan":
        """Evidence and prompts of every (history, item) row (no prompts without the LLM): ``.cached()``
        the rows whose prompt the model answered before, ``.generation()`` the others' rows for the model,
        ``.judge(i, tail)`` the checked explanation of its row i once its tail is written (the pipeline
        judges each row as it finishes, in a call it may share). ``adapter``: the one the rows run with."""
        requests = [([int(h) for h in history], [int(i) for i in items]) for history, items in requests]
        rows = [(history, item, self.evidence(history, item)) for history, items in requests for item in items]
        use_llm = self.use_llm if use_llm is None else use_llm
        prompts, prefixes = [], [""] * len(rows)
        if use_llm and rows:
            prefixes = []
            for _, item, ev in rows:
                text, prefix = self.prompt(item, ev)
                prompts.append(text)
                prefixes.append(prefix)
            self.last_prompts, self.last_tails = prompts, [""] * len(rows)
        return ExplainPlan(self, requests, rows, prompts, prefixes, adapter)

    # -- the cache of the model's tails --
    def _key(self, prompt: str, adapter: str | None) -> tuple:
        return self.service.llm.name, adapter, self.max_new_tokens, prompt

    def known_tail(self, prompt: str, adapter: str | None) -> str | None:
        if not self.cache_rows:
            return None
        key = self._key(prompt, adapter)
        with self._tails_lock:
            tail = self._tails.get(key)
            if tail is not None:
                self._tails.move_to_end(key)
                self.cache_hits += 1
            return tail

    def remember_tail(self, prompt: str, adapter: str | None, tail: str) -> None:
        if not self.cache_rows:
            return
        key = self._key(prompt, adapter)
        with self._tails_lock:
            self._tails[key] = tail
            self._tails.move_to_end(key)
            while len(self._tails) > self.cache_rows:
                self._tails.popitem(last=False)

    def forget(self) -> None:
        """Empty the cache (the benches time answers that are no cache hit)."""
        with self._tails_lock:
            self._tails.clear()

    def judge(self, history, item: int, evidence: list[dict], prefix: str, tail: str) -> Explanation:
        """The model's sentence (primed ``prefix`` + its ``tail``) when every claim checks out; else
        the same sentence repaired when that passes (a count corrected, an unbacked word dropped, cut back
        to its last whole clause); else the template. ``failed_checks`` names what the model's sentence
        failed (before any repair)."""
        checker = self.checker(history, item, evidence)
        sentence, written = self.sentence(prefix, tail)
        problems = checker.problems(sentence, written) if tail.strip() else {"empty": [written]}
        failed = list(problems)
        if written and (META.search(written) or repetitive(written)) and "empty" not in failed:
            failed.append("empty")  # talks about the task ("not listed"), or loops
        if not failed:
            return Explanation(item, evidence, sentence, rationale_source="llm", llm_rationale=sentence)
        if failed == ["number"]:  # a count given to the wrong title ("17 fans of "Taken""): the data's count
            first = next((int(e["co_occurrence"]) for e in evidence[:1] if e.get("co_occurrence")), None)
            fixed, part = checker.corrected_counts(sentence, first), checker.corrected_counts(written, first)
            if fixed != sentence and not checker.failures(fixed, part):
                return Explanation(item, evidence, fixed, rationale_source="llm", llm_rationale=sentence,
                                   failed_checks=failed, repair="count corrected from the evidence")
        if failed == ["unbacked"]:  # "a superhero action movie": the words nothing backs go, "an action movie" stays
            fixed = self._without_unbacked(checker, item, prefix, sentence, problems["unbacked"])
            if fixed:
                return Explanation(item, evidence, fixed, rationale_source="llm", llm_rationale=sentence,
                                   failed_checks=failed, repair="unchecked words dropped")
        for shorter, part in trimmed(prefix, written):
            if META.search(part) or repetitive(part):
                continue
            problems = checker.problems(shorter, part)
            if list(problems) == ["unbacked"]:  # the last whole clause, its unbacked modifiers dropped
                shorter = self._without_unbacked(checker, item, prefix, shorter, problems["unbacked"])
            if shorter and (not problems or list(problems) == ["unbacked"]):
                return Explanation(item, evidence, shorter, rationale_source="llm", llm_rationale=sentence,
                                   failed_checks=failed, repair="trimmed to its last whole clause")
        return Explanation(item, evidence, self.template(item, evidence), rationale_source="template",
                           llm_rationale=sentence, failed_checks=failed)

    def _without_unbacked(self, checker, item: int, prefix: str, sentence: str, loose: list[str]) -> str | None:
        """``sentence`` with the ``loose`` words dropped from what the item is, when that passes every check."""
        fixed = without_modifiers(sentence, self.catalog.titles[int(item)], loose)
        part = fixed[len(prefix):].strip()
        ok = fixed != sentence and fixed.startswith(prefix) and not checker.failures(fixed, part)
        return fixed if ok else None

    def sentence(self, prefix: str, tail: str) -> tuple[str, str]:
        """(the sentence, the model's part of it): the tail's first sentence after the primed start;
        a tail that ended without a full stop but before the token limit ends here, one cut by
        the limit stays cut (the ``cut_off`` check fails it)."""
        text = re.sub(r"\s+", " ", tail or "").strip()
        end = sentence_end(text + " ")
        first = AN.sub(r"\1n ", text[:end].strip() if end else text)
        if first and first[-1] not in ".!?\"”)" and self._stopped_early(tail):
            first = first.rstrip(",;:- ") + "."
        joined = (prefix + ("" if first[:1] in ",.;:!?'" else " ") + first).strip()
        return joined, first

    def _stopped_early(self, tail: str) -> bool:
        tok = self.service.llm.tokenizer
        return len(tok(tail, add_special_tokens=False)["input_ids"]) < self.max_new_tokens - 1

    def prompt(self, item: int, evidence: list[dict]) -> tuple[str, str]:
        """(prompt ending with the primed answer, the sentence's start as shown: the evidence lead and
        the primed answer) for one item, its titles as prompts show them; the weakest evidence goes first
        when the prompt would not fit the context."""
        llm = self.service.llm
        target = P.prompt_title(short_title(self.catalog.titles[int(item)]))
        kind = product_kind(self.catalog, item)  # products: what the item is, from its title
        attributes = [P.prompt_title(a) for a in self.catalog.attributes[int(item)][:3]] or ([kind] if kind else [])
        shown = evidence[:self.facts]
        titles = [P.prompt_title(short_title(e["title"])) for e in shown]
        facts = self.fact_lines(item, shown)

        def build(kept, example=True):  # ``kept``: evidence titles weakest first, so fitting drops the weakest
            counted = any(int(e["co_occurrence"]) for e in evidence[:len(kept)])  # a fact shown gives a count
            text, prefix = P.render_explain(llm.tokenizer, self.domain, kept[::-1], target, attributes,
                                            facts[:len(kept)], example, kind, counted)
            return text, prefix, llm.tokenizer(text)["input_ids"]
        limit = P.context_limit(llm) - self.max_new_tokens
        if not titles:
            text, prefix, ids = build([])
            return (text, prefix) if len(ids) <= limit else build([], example=False)[:2]
        try:
            _, (text, prefix, _) = P.fit_to_context(build, titles[::-1], limit, size=lambda built: len(built[2]),
                                                    what="evidence title")
        except ValueError:  # a context too small for the worked example: go without it
            _, (text, prefix, _) = P.fit_to_context(lambda kept: build(kept, example=False), titles[::-1], limit,
                                                    size=lambda built: len(built[2]), what="evidence title")
        return text, prefix

class ExplainPlan:
    """One explain call's rows (``Explainer.plan``): each is judged as soon as the model's tail of it
    is there, so a row that finishes early is shown early. The rows whose prompt the model answered
    before (``Explainer.known_tail``) are judged at once (``cached``); the others (``todo``, in row order)
    go to the model, one generation row each; a prompt two rows share is written once."""

    def __init__(self, explainer: Explainer, requests, rows, prompts, prefixes, adapter=None):
        self.explainer, self.requests, self.rows, self.adapter = explainer, requests, rows, adapter
        self.prompts, self.prefixes = prompts, prefixes  # no prompts: templates only
        self.known: dict[int, str] = {}  # row -> the cached tail
        first: dict[str, int] = {}  # prompt -> the row that generates it
        self.todo: list[int] = []  # rows to generate, one per distinct prompt
        self.repeats: dict[int, list[int]] = {}  # generated row -> later rows with the same prompt
        for row, prompt in enumerate(prompts):
            tail = explainer.known_tail(prompt, adapter)
            if tail is not None:
                self.known[row] = tail
            elif prompt in first:
                self.repeats.setdefault(first[prompt], []).append(row)
            else:
                first[prompt] = row
                self.todo.append(row)

    def todo_prompts(self) -> list[str]:
        return [self.prompts[row] for row in self.todo]

    def generation(self):
        """The ``todo`` rows for ``LLMService.run`` / ``stream`` (one ``Generation``), as ``explain_many``
        sends them."""
        return self.explainer.service.generation(self.todo_prompts(), max_new_tokens=self.explainer.max_new_tokens,
                                                 stop_strings=["\n"], stop_when=sentence_done)

    def cached(self) -> list[tuple[int, Explanation]]:
        """(row, explanation) of the rows whose tail the cache held; every row without prompts (no LLM)."""
        if not self.prompts:
            return [(row, self._judge(row, "")) for row in range(len(self.rows))]
        return [(row, self._judge(row, tail)) for row, tail in self.known.items()]

    def judge(self, i: int, tail: str) -> list[tuple[int, Explanation]]:
        """(row, explanation) of generation row ``i`` and of the rows sharing its prompt, given the model's
        ``tail`` (which the cache keeps)."""
        row = self.todo[i]
        self.explainer.remember_tail(self.prompts[row], self.adapter, tail)
        return [(r, self._judge(r, tail)) for r in [row] + self.repeats.get(row, [])]

    def _judge(self, row: int, tail: str) -> Explanation:
        """The checked (or repaired, or templated) explanation of ``row`` given the model's ``tail``."""
        history, item, evidence = self.rows[row]
        if self.prompts:
            self.explainer.last_tails[row] = tail
        return self.explainer.judge(history, item, evidence, self.prefixes[row], tail)


def sentence_done(text: str) -> bool:
    """generate's ``stop_when``: a module-level function, so concurrent requests' explanation
    calls compare equal and share one batch (LLMService.generate)."""
    return sentence_end(text) is not None


def sentence_end(text: str) -> int | None:
    """Where the first sentence of ``text`` ends (after its full stop and closing quote), counting only
    full stops outside quotes ("E.T. the Extra-Terrestrial" goes on) and followed by more text."""
    for m in DONE.finditer(text):
        before = text[: m.start() + 1]
        if before.count('"') % 2 == 0 and before.count("“") == before.count("”"):
            return m.end()
    return None


def without_modifiers(sentence: str, title: str, loose: list[str]) -> str:
    """``sentence`` with the ``loose`` (unbacked) words taken out of the phrase saying what the item
    (``title``) is, where they qualify a word after them ("is a superhero action movie" -> "is an action
    movie"); the phrase's last word, its noun, stays (an unbacked noun leaves the phrase as it was)."""
    drop = {w.lower() for w in loose}
    for m in what_it_is(sentence, title):
        said = m.group(2).split()
        kept = [w for w in said[:-1] if re.sub(r"'s$", "", w).lower() not in drop] + said[-1:]
        if len(kept) == len(said):
            continue
        head = sentence[:m.start(2)]
        article = re.search(r"\b(an?)\s+$", head, re.I)
        phrase = " ".join(kept)
        if article:  # "an epic comedy" -> "a comedy", "a superhero action movie" -> "an action movie"
            head, phrase = head[:article.start()], AN.sub(r"\1n ", f"{article.group(1)[0]} {phrase}")
        return head + phrase + sentence[m.end(2):]
    return sentence


def trimmed(prefix: str, written: str):
    """Shorter versions of a sentence (and of the model's part): cut at each comma, last first, each
    keeping at least three of the model's words, so a bad or cut-off last clause can go."""
    parts = written.rstrip(".!? ").split(",")
    for n in range(len(parts) - 1, 0, -1):
        part = ",".join(parts[:n]).rstrip(",;:- ")
        words = part.split()
        while len(words) > 1 and words[-1].lower() in CLAUSE_DANGLING:
            words.pop()
        part = " ".join(words)
        if len(re.findall(r"\w+", part)) >= 3:
            yield (prefix + ("" if part[:1] in ",.;:!?'" else " ") + part + ".").strip(), part + "."
