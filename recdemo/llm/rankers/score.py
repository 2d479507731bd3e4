"""``score``: every candidate scored by the likelihood of its title as the history's next line.

Shared-prefix likelihood. The prompt is the ``sequence`` template: the last <= 20 history items as
an open numbered list ("1. Toy Story (1995)", ...) ending with the next line's number; fine-tuning
task ``sequence`` teaches it, with every line of a training window as a target (SASRec's objective,
written in titles). The prompt is encoded once. The candidates' lines (' Title\n') form a token
trie; the score of a candidate is the log-probability of its line, renormalised at each branch over
the candidates' tokens (the distribution constrained decoding picks from). Only tokens up to each
title's last branching point are fed, all packed into one forward call over the prompt's KV cache
(``tree.trie_logprobs``): about 2-4 tokens per candidate instead of ~12.

The prompt does not list the candidates (that would add ~12 tokens per candidate, 600 for 50, and
the prompt dominates the cost on CPU); a LlamaRec-style verbalizer needs that list, which is why
this ranker does not use one. The profile is not part of this prompt either: PALR's full prompt
(history, profile, candidates) is the ``palr`` ranker's.
"""
from __future__ import annotations

import time

import numpy as np

from recdemo.records import RerankRequest
from recdemo.llm import prompts as P
from recdemo.llm.token_trie import TokenTrie
from recdemo.llm.rankers.base import Ranker, ScoredList
from recdemo.llm.rankers.decoding import TreeDecoder, trie_logprobs


class ScoreRanker(Ranker):
    name = "score"
    template = "sequence"

    def pieces(self, req: RerankRequest, history=None) -> tuple[str, list]:
        head = P.render_open(self.tokenizer, self.template, self.domain)
        history = self.fitted_history(req) if history is None else history
        return head, P.sequence_pieces(self.catalog, history, self.max_history)

    def fitted_history(self, req: RerankRequest) -> list[int]:
        """The newest history items that leave room for the longest candidate line after the prompt."""
        lines = [len(t) for t, _ in self.line_tokens([c.index for c in req.candidates], P.sequence_answer)]
        return self.fit(lambda h: P.encode_pieces(self.tokenizer, *self.pieces(req, h))[0], req.history,
                        max(lines, default=0))[0]

    def prompt(self, req: RerankRequest) -> str:
        head, pieces = self.pieces(req)
        return head + "".join(text for text, _ in pieces)

    def prompt_ids(self, req: RerankRequest) -> list[int]:
        """Tokens piece by piece, exactly as fine-tuning encodes a ``sequence`` window."""
        return P.encode_pieces(self.tokenizer, *self.pieces(req))[0]

    def candidate_trie(self, items) -> TokenTrie:
        return TokenTrie(self.line_tokens(items, P.sequence_answer))

    def score_list(self, req: RerankRequest) -> ScoredList:
        out = self.candidate_list(req)
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            prompt_ids = self.prompt_ids(req)
            decoder = TreeDecoder(llm.model, prompt_ids, device=llm.device)
            logp = trie_logprobs(decoder, self.candidate_trie(out.items))
        out.llm = np.array([logp[i] for i in out.items], dtype=np.float64)
        out.info = {"adapter": adapter, "prompt_tokens": len(prompt_ids), "tree_tokens": len(decoder.tokens),
                    "forwards": decoder.forwards, "llm_seconds": time.perf_counter() - start}
        return out
