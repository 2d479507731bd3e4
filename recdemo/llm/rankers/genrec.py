"""``genrec``: the model generates the next items' titles directly from the history (GenRec).

Prompt: the ``genrec`` template ("what is the next item the user will <verb>? Answer with its title
only"); fine-tuning task ``genrec``, whose answer is the title followed by the end-of-answer token.

Decoding is a beam search with k beams over a token trie of the whole catalog (each title + the
end-of-answer token), with the user's history taken out, so the k finished beams are k distinct
catalog items the user has not seen. The SASRec candidates are not used to generate; SASRec's
scores are used to fuse, when a retriever is given: the fused list is SASRec's candidates plus the
generated items (see ``score_list``), so weight 0 gives SASRec's own top k, as for every ranker.

All beams share the prompt's KV cache: each step feeds every surviving beam's next token (plus the
tokens the trie forces after it) packed into one forward call (``TreeDecoder``). A beam's score is
its constrained log-probability (renormalised over the tokens the trie allows at each branch).

The beam search is written once (``beam_steps``, a program of read/extend requests, batch_tree.py):
``score_list`` drives it with a ``TreeDecoder``, ``score_many`` runs several users' searches in lock
step on a ``BatchTreeDecoder`` (one forward per step for all of them; evaluation batches).
"""
from __future__ import annotations

import time

import numpy as np

from recdemo.records import RerankRequest
from recdemo.llm import prompts as P
from recdemo.llm.token_trie import TokenTrie
from recdemo.llm.rankers.base import Ranker, ScoredList
from recdemo.llm.rankers.batch_tree import BatchTreeDecoder, pad_id, run_lockstep, run_steps
from recdemo.llm.rankers.decoding import ROOT, TreeDecoder


class GenRecRanker(Ranker):
    name = "genrec"
    template = "genrec"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._trie: TokenTrie | None = None
        self._longest_answer = 0  # tokens of the longest title + end: what beams may add to the prompt

    def prompt(self, req: RerankRequest) -> str:
        return self.fitted(req)[0]

    def fitted(self, req: RerankRequest) -> tuple[str, list[int]]:
        """(prompt, its token ids), the history cut to leave room for the longest catalog title."""
        def text(history):
            return self.render(self.template, history=self.history_text(history))
        self.catalog_trie()
        history, ids = self.fit(lambda h: self.encode_prompt(text(h)), req.history, self._longest_answer)
        return text(history), ids

    def end_text(self) -> str:
        return P.end_of_answer(self.tokenizer) or P.TITLE_SEPARATOR

    def catalog_trie(self) -> TokenTrie:
        """Built once per ranker: the whole catalog's titles (a few seconds for ~10k items)."""
        if self._trie is None:
            answers = self.answer_tokens(range(len(self.catalog)), self.end_text())
            self._longest_answer = max((len(t) for t, _ in answers), default=0)
            self._trie = TokenTrie(answers)
        return self._trie

    def score_list(self, req: RerankRequest) -> ScoredList:
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            trie = self.catalog_trie()
            seen = {int(h): trie.path(int(h)) for h in req.history if int(h) in trie}
            for h in seen:  # never recommend what the user already has; put back afterwards
                trie.remove(h)
            try:
                prompt_ids = self.fitted(req)[1]
                decoder = TreeDecoder(llm.model, prompt_ids, device=llm.device,
                                      backend=self.cfg.decode_backend)
                found = beam_titles(decoder, trie, req.k)
            finally:
                for h, path in seen.items():
                    trie.add(path, h)
        info = {"adapter": adapter, "prompt_tokens": len(prompt_ids), "tree_tokens": len(decoder.tokens),
                "forwards": decoder.forwards, "generated": [i for i, _ in found],
                "llm_seconds": time.perf_counter() - start}
        return self.fused_list(req, found, info)

    def score_many(self, reqs: list[RerankRequest]) -> list[ScoredList]:
        """``score_list`` for several users at once: their beam searches in lock step, every step one
        forward call for all of them (batch_tree.py). The users share the catalog trie: each one's
        history is out of it exactly while its own search runs (``without_items``)."""
        if not reqs:
            return []
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            trie = self.catalog_trie()
            prompts = [self.fitted(r)[1] for r in reqs]
            programs = [without_items(trie, r.history, beam_steps(trie, r.k)) for r in reqs]
            decoder = BatchTreeDecoder(llm.model, prompts, device=llm.device, pad_id=pad_id(llm.tokenizer),
                                       max_nodes=self.cfg.batch_tree_nodes)
            found = run_lockstep(decoder, programs)
        seconds = time.perf_counter() - start
        return [self.fused_list(req, f, {"adapter": adapter, "prompt_tokens": len(prompt),
                                         "tree_tokens": len(decoder.tokens[b]), "forwards": decoder.forwards,
                                         "generated": [i for i, _ in f], "batch": len(reqs),
                                         "llm_seconds": seconds})
                for b, (req, f, prompt) in enumerate(zip(reqs, found, prompts))]

    def fused_list(self, req: RerankRequest, found: list[tuple[int, float]], info: dict) -> ScoredList:
        """The generated items as a ScoredList, with SASRec's candidates to fuse with when it can."""
        if self.retriever is None or not found:  # nothing to fuse with: the generated list alone
            items = [i for i, _ in found]
            return ScoredList(items, np.array([s for _, s in found], dtype=np.float64), None,
                              [None] * len(items), info)
        # Fusion list = SASRec's candidates + the generated items, all scored by SASRec (score_all);
        # items the LLM did not generate sit below every generated one. With w = 0 this is exactly
        # SASRec's top k (the candidates are its best-scored items), with w = 1 the generated list.
        out = self.candidate_list(req)
        llm_of = dict(found)
        items = out.items + [i for i, _ in found if i not in set(out.items)]
        floor = min(llm_of.values()) - 1.0
        sasrec = np.asarray(self.retriever.score_all(list(req.history)), dtype=np.float64)[items]
        rank_of = {int(c.index): int(c.rank) for c in req.candidates}
        return ScoredList(items, np.array([llm_of.get(i, floor) for i in items], dtype=np.float64), sasrec,
                          [rank_of.get(i) for i in items], info)


def without_items(trie: TokenTrie, items, program):
    """``program`` run with ``items`` out of the shared ``trie``, put back whenever it pauses (so
    programs of several users can take turns on one trie)."""
    answer = None
    while True:
        seen = {int(h): trie.path(int(h)) for h in items if int(h) in trie}
        for h in seen:
            trie.remove(h)
        try:
            request = program.send(answer)
        except StopIteration as stop:
            return stop.value
        finally:
            for h, path in seen.items():
                trie.add(path, h)
        answer = yield request


def beam_titles(decoder: TreeDecoder, trie: TokenTrie, k: int) -> list[tuple[int, float]]:
    """k distinct items by beam search over the trie: [(item, constrained log-prob)], best first."""
    return run_steps(decoder, beam_steps(trie, k, len(decoder.tokens)))


def beam_steps(trie: TokenTrie, k: int, n_nodes: int = 0):
    """The program of ``beam_titles`` (requests as in batch_tree.py) on a decoder holding ``n_nodes``
    nodes; returns [(item, constrained log-prob)], best first."""
    beams = [((), ROOT, 0.0)]  # (token prefix, node holding its last token, log-prob)
    finished: list[tuple[int, float]] = []
    while beams and len(finished) < k:
        allowed = [trie.allowed(prefix) for prefix, _, _ in beams]
        asked = [(node, a) for (_, node, _), a in zip(beams, allowed) if len(a) > 1]
        answers = iter((yield ("read", asked)) if asked else [])
        expansions = []
        for (prefix, node, score), toks in zip(beams, allowed):
            lps = next(answers).tolist() if len(toks) > 1 else [0.0] * len(toks)
            expansions.extend((score + lp, prefix, node, t) for t, lp in zip(toks, lps))
        expansions.sort(key=lambda e: -e[0])
        tokens, parents, survivors = [], [], []
        for score, prefix, node, t in expansions:
            if len(survivors) + len(finished) >= k:  # k beams in all, finished ones included
                break
            chunk = [t] + trie.forced(prefix + (t,))
            full = prefix + tuple(chunk)
            done = trie.values_at(full)
            if done:  # a whole title: it leaves the beam (its tokens never need a forward)
                finished.extend((v, score) for v in done[: k - len(finished)])
                continue
            first = n_nodes + len(tokens)
            tokens.extend(chunk)
            parents.extend([node] + list(range(first, first + len(chunk) - 1)))
            survivors.append((full, first + len(chunk) - 1, score))
        if tokens:  # (nothing to feed: every expansion finished, and the search ends)
            yield ("extend", tokens, parents)
            n_nodes += len(tokens)
        beams = survivors
    finished.sort(key=lambda f: -f[1])
    return finished[:k]
