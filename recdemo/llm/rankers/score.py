"""``score``: every candidate scored by the likelihood of its title as the history's next line.

Shared-prefix likelihood. The prompt is the ``sequence`` template: the last <= 20 history items as
an open numbered list ("1. Toy Story (1995)", ...) ending with the next line's number; fine-tuning
task ``sequence`` teaches it, with every line of a training window as a target (SASRec's objective,
written in titles). The prompt is encoded once. The candidates' lines (' Title\n') form a token
trie; the score of a candidate is the log-probability of its line, renormalised at each branch over
the candidates' tokens (the distribution constrained decoding picks from). Only tokens up to each
title's last branching point are fed, all packed into one forward call over the prompt's KV cache
(``decoding.trie_logprobs``): about 2-4 tokens per candidate instead of ~12; every branching point's
distribution is then read in one matmul with one device -> host transfer.

Per-call host work is kept small: the candidates' lines, the history's lines and the list numbers
come from the ranker's token cache (``base.TokenCache``: a catalog's lines are tokenized once), so
fitting the history to the context only concatenates ids. On a GPU the tree call runs on a static
KV cache captured as a CUDA graph (``LLMConfig.decode_backend``; ``tree_kv``).

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
from recdemo.llm.decode import select_backend
from recdemo.llm.token_trie import TokenTrie
from recdemo.llm.rankers.base import Ranker, ScoredList
from recdemo.llm.rankers.decoding import TreeDecoder, trie_feed, trie_logprobs


class ScoreRanker(Ranker):
    name = "score"
    template = "sequence"

    def pieces(self, req: RerankRequest, history=None) -> tuple[str, list]:
        head = P.render_open(self.tokenizer, self.template, self.domain)
        history = self.fitted_history(req) if history is None else history
        return head, P.sequence_pieces(self.catalog, history, self.max_history)

    def fitted_history(self, req: RerankRequest) -> list[int]:
        """The newest history items that leave room for the longest candidate line after the prompt."""
        return self.fitted(req)[0]

    def fitted(self, req: RerankRequest) -> tuple[list[int], list[int]]:
        """(history kept, prompt ids): the newest history items that leave room for the longest
        candidate line after the prompt. Every piece's ids come from the token cache."""
        lines = [len(t) for t, _ in self.line_tokens([c.index for c in req.candidates], P.sequence_answer)]
        return self.fit(lambda h: self.encode_pieces(*self.pieces(req, h)), req.history, max(lines, default=0))

    def prompt(self, req: RerankRequest) -> str:
        head, pieces = self.pieces(req)
        return head + "".join(text for text, _ in pieces)

    def prompt_ids(self, req: RerankRequest) -> list[int]:
        """Tokens piece by piece, exactly as fine-tuning encodes a ``sequence`` window
        (``prompts.encode_pieces``)."""
        return self.fitted(req)[1]

    def candidate_trie(self, items) -> TokenTrie:
        return TokenTrie(self.line_tokens(items, P.sequence_answer))

    def score_list(self, req: RerankRequest) -> ScoredList:
        out = self.candidate_list(req)
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            prompt_ids = self.prompt_ids(req)
            trie = self.candidate_trie(out.items)
            backend = select_backend(self.cfg.decode_backend, llm.device)
            reserve = len(trie_feed(trie)[0]) if backend != "eager" else 0  # a static cache's size
            decoder = TreeDecoder(llm.model, prompt_ids, device=llm.device, backend=backend, reserve=reserve)
            logp = trie_logprobs(decoder, trie)
        out.llm = np.array([logp[i] for i in out.items], dtype=np.float64)
        out.info = {"adapter": adapter, "prompt_tokens": len(prompt_ids), "tree_tokens": len(decoder.tokens),
                    "forwards": decoder.forwards, "backend": decoder.backend,
                    "llm_seconds": time.perf_counter() - start}
        return out
