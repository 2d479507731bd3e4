"""``score``: every candidate scored by the likelihood of its title as the model's answer.

Shared-prefix likelihood. The prompt is the PALR ``palr_recommend`` template (history + profile,
"name the k items this user will <verb> next, one title per line"; fine-tuning task ``recommend``)
and is encoded once. The candidates' titles (each followed by the line separator) form a token
trie; the score of a candidate is the log-probability of its title as the first answer line,
renormalised at each branch over the candidates' tokens (the same distribution PALR's constrained
decoding picks from). Only tokens up to each title's last branching point are fed, all packed into
one forward call over the prompt's KV cache (``tree.trie_logprobs``): about 2-4 tokens per
candidate instead of ~12, so 50 candidates cost a fraction of the prompt itself.

The prompt does not list the candidates (that would add ~12 tokens per candidate, 600 for 50, and
the prompt dominates the cost on CPU); a LlamaRec-style verbalizer needs that list, which is why
this ranker does not use one.
"""
from __future__ import annotations

import time

import numpy as np

from ...types import RerankRequest
from .. import prompts as P
from ..trie import TokenTrie
from .base import Ranker, ScoredList
from .tree import TreeDecoder, trie_logprobs


class ScoreRanker(Ranker):
    name = "score"
    template = "palr_recommend"

    def prompt(self, req: RerankRequest) -> str:
        return self.render(self.template, history=self.history_text(req.history),
                           profile=P.format_profile(req.profile), k=req.k)

    def score_list(self, req: RerankRequest) -> ScoredList:
        out = self.candidate_list(req)
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            prompt_ids = self.encode_prompt(self.prompt(req))
            trie = TokenTrie(self.answer_tokens(out.items, P.TITLE_SEPARATOR))
            decoder = TreeDecoder(llm.model, prompt_ids, device=llm.device, use_cache=self.use_cache)
            logp = trie_logprobs(decoder, trie)
        out.llm = np.array([logp[i] for i in out.items], dtype=np.float64)
        out.info = {"adapter": adapter, "prompt_tokens": len(prompt_ids), "tree_tokens": len(decoder.tokens),
                    "forwards": decoder.forwards, "llm_seconds": time.perf_counter() - start}
        return out
