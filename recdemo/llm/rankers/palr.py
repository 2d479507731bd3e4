"""``palr``: the model writes its top-k list, constrained to the candidates' titles (PALR).

Prompt: the ``palr_rank`` template (Interaction History Sequence, last ``max_history`` items;
Natural Language User Profile; Candidates for Recommendation in SASRec order; "choose only from
the candidates, one title per line"); fine-tuning task ``recommend_retrieval``.

Decoding is greedy over a token trie of the candidates' titles, each followed by the line
separator, so every line is a whole candidate title. An emitted title is removed from the trie
(no repeats). The prompt is encoded once; each step feeds the chosen token plus every token the
trie forces after it (a title usually becomes unique after 2-3 tokens) as one chunk on top of the
KV cache, so a title costs about as many forward calls as it has branching points. Decoding stops
as soon as k titles are out.

Scores: the LLM score of an emitted title is its list position (k for the first, k-1 for the
next, ...; candidates not emitted get 0); the constrained log-probability of each title is kept in
``last_info["logprobs"]`` for display and tie analysis.

The greedy loop is written once (``greedy_steps``, a program of read/extend requests, batch_tree.py):
``score_list`` drives it with a ``TreeDecoder``, ``score_many`` runs several users' programs in
lock step on a ``BatchTreeDecoder`` (one forward per step for all of them; evaluation batches).
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


class PALRRanker(Ranker):
    name = "palr"
    template = "palr_rank"

    def prompt(self, req: RerankRequest, items: list[int] | None = None) -> str:
        items = items if items is not None else self.candidate_list(req).items
        return self.fitted(req, items)[0]

    def fitted(self, req: RerankRequest, items: list[int]) -> tuple[str, list[int]]:
        """(prompt, its token ids) with the history cut to leave room for the k longest answers."""
        def text(history):
            return self.render(self.template, history=self.history_text(history),
                               profile=P.format_profile(req.profile),
                               candidates=P.format_candidates(self.catalog, items), k=min(req.k, len(items)))
        answers = sorted(len(t) for t, _ in self.answer_tokens(items, P.TITLE_SEPARATOR))
        history, ids = self.fit(lambda h: self.encode_prompt(text(h)), req.history, sum(answers[-req.k:]))
        return text(history), ids

    def score_list(self, req: RerankRequest) -> ScoredList:
        out = self.candidate_list(req)
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            prompt_ids = self.fitted(req, out.items)[1]
            trie = TokenTrie(self.answer_tokens(out.items, P.TITLE_SEPARATOR))
            decoder = TreeDecoder(llm.model, prompt_ids, device=llm.device,
                                  backend=self.cfg.decode_backend)
            emitted = greedy_titles(decoder, trie, req.k)
        return _scored(out, emitted, {"adapter": adapter, "prompt_tokens": len(prompt_ids),
                                      "generated_tokens": len(decoder.tokens), "forwards": decoder.forwards},
                       time.perf_counter() - start)

    def score_many(self, reqs: list[RerankRequest]) -> list[ScoredList]:
        """``score_list`` for several users at once: their greedy decodings in lock step, every step
        one forward call for all of them (batch_tree.py); the same lists as one by one."""
        outs = [self.candidate_list(r) for r in reqs]
        if not reqs:
            return outs
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            prompts = [self.fitted(r, o.items)[1] for r, o in zip(reqs, outs)]
            programs = [greedy_steps(TokenTrie(self.answer_tokens(o.items, P.TITLE_SEPARATOR)), r.k)
                        for r, o in zip(reqs, outs)]
            decoder = BatchTreeDecoder(llm.model, prompts, device=llm.device, pad_id=pad_id(llm.tokenizer),
                                       max_nodes=self.cfg.batch_tree_nodes)
            found = run_lockstep(decoder, programs)
        seconds = time.perf_counter() - start
        return [_scored(out, emitted, {"adapter": adapter, "prompt_tokens": len(prompt),
                                       "generated_tokens": len(decoder.tokens[b]), "forwards": decoder.forwards,
                                       "batch": len(reqs)}, seconds)
                for b, (out, emitted, prompt) in enumerate(zip(outs, found, prompts))]


def _scored(out: ScoredList, emitted: list[tuple[int, float]], info: dict, seconds: float) -> ScoredList:
    """The list's LLM scores from the emitted titles: k - position for the emitted, 0 for the rest."""
    position = {item: len(emitted) - p for p, (item, _) in enumerate(emitted)}
    out.llm = np.array([float(position.get(i, 0)) for i in out.items])
    out.info = {**info, "logprobs": {int(i): lp for i, lp in emitted}, "llm_seconds": seconds}
    return out


def greedy_titles(decoder: TreeDecoder, trie: TokenTrie, k: int) -> list[tuple[int, float]]:
    """Greedy constrained decoding of up to k distinct items: [(item, constrained log-prob)]."""
    return run_steps(decoder, greedy_steps(trie, k, len(decoder.tokens)))


def greedy_steps(trie: TokenTrie, k: int, n_nodes: int = 0):
    """The program of ``greedy_titles`` (requests as in batch_tree.py) on a decoder holding
    ``n_nodes`` nodes; returns [(item, constrained log-prob)]."""
    emitted: list[tuple[int, float]] = []
    parent = ROOT  # the node whose hidden state predicts the next token
    prefix: list[int] = []  # tokens of the title being written
    logp = 0.0
    while len(emitted) < k and len(trie):
        allowed = trie.allowed(prefix)
        if not allowed:
            break
        if len(allowed) > 1:  # a real choice: ask the model (renormalised over allowed tokens)
            (lps,) = yield ("read", [(parent, allowed)])
            best = int(lps.argmax())
            token, logp = allowed[best], logp + float(lps[best])
        else:
            token = allowed[0]
        chunk = [token] + trie.forced(prefix + [token])  # no choice left: feed these in one go
        prefix += chunk
        done = trie.values_at(prefix)
        if done:
            emitted.append((done[0], logp))
            trie.remove(done[0])
            prefix, logp = [], 0.0
            if len(emitted) == k or not len(trie):
                break  # the last title's tokens never need to go through the model
        new = yield ("extend", chunk, [parent] + list(range(n_nodes, n_nodes + len(chunk) - 1)))
        n_nodes += len(chunk)
        parent = new[-1]
    return emitted
