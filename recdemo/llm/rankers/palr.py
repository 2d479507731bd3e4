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
"""
from __future__ import annotations

import time

import numpy as np

from recdemo.records import RerankRequest
from recdemo.llm import prompts as P
from recdemo.llm.token_trie import TokenTrie
from recdemo.llm.rankers.base import Ranker, ScoredList
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
        position = {item: len(emitted) - p for p, (item, _) in enumerate(emitted)}
        out.llm = np.array([float(position.get(i, 0)) for i in out.items])
        out.info = {"adapter": adapter, "prompt_tokens": len(prompt_ids), "generated_tokens": len(decoder.tokens),
                    "forwards": decoder.forwards, "logprobs": {int(i): lp for i, lp in emitted},
                    "llm_seconds": time.perf_counter() - start}
        return out


def greedy_titles(decoder: TreeDecoder, trie: TokenTrie, k: int) -> list[tuple[int, float]]:
    """Greedy constrained decoding of up to k distinct items: [(item, constrained log-prob)]."""
    emitted: list[tuple[int, float]] = []
    parent = ROOT  # the node whose hidden state predicts the next token
    prefix: list[int] = []  # tokens of the title being written
    logp = 0.0
    while len(emitted) < k and len(trie):
        allowed = trie.allowed(prefix)
        if not allowed:
            break
        if len(allowed) > 1:  # a real choice: ask the model (renormalised over allowed tokens)
            lps = decoder.log_softmax_over(parent, allowed)
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
        new = decoder.extend(chunk, [parent] + list(range(len(decoder.tokens), len(decoder.tokens) + len(chunk) - 1)))
        parent = new[-1]
    return emitted
