"""Fine-tuning task ``rank``: train the ``score`` ranker on the very lists it reranks.

``sequence`` teaches the model to write the next title out of the whole catalog; at inference the
``score`` ranker only has to order SASRec's top-50, and those candidates are exactly the items
SASRec finds similar to the history: hard negatives that a catalog-wide objective rarely contrasts.
LlamaRec trains on its retriever's candidates for this reason. ``rank`` does the same with the
ranker's own arithmetic: the training cut's history as the ``sequence`` prompt, SASRec's top-N for
that history as a token trie of ' Title\n' lines, and ``tree.trie_logprobs`` over the prompt's KV
cache with the graph kept. The constrained probabilities of the candidates sum to one over the
list, so the loss is the listwise cross-entropy -log P(true item | candidates): what the ranker
computes at inference, trained directly. Examples are cuts whose next item SASRec's list holds
(tasks.Rank draws them; elsewhere no reranker can change the outcome). ``sasrec_weight`` trains the
residual on top of SASRec's score instead (``rank_loss``).

Cost per example: the prompt (~350 tokens) plus the trie's branching prefixes (~150 tokens for 50
candidates) in two forward calls and one backward, ~0.9 s in bf16 on 2 CPU cores.
"""
from __future__ import annotations

import numpy as np
import torch

from recdemo.llm import prompts as P
from recdemo.llm.rankers.decoding import TreeDecoder, trie_feed, trie_logprobs
from recdemo.llm.token_trie import TokenTrie


def rank_candidates(retriever, history, target: int, n: int, banned=(), allowed=None) -> tuple[list[int], bool]:
    """(SASRec's top-``n`` for ``history`` as the ranker gets them with ``target`` in the list, whether
    SASRec had it there itself).

    ``banned`` items never serve as negatives (the user's own later and held-out items: training
    the model to push down what the user goes on to watch would teach it the opposite of the task);
    with ``allowed`` (a boolean mask) only those items do (items seen in training)."""
    if retriever is None:
        raise ValueError("the fine-tuning task 'rank' trains on SASRec's candidate lists: train SASRec "
                         "first (python -m recdemo train --dataset NAME) or choose other tasks")
    target = int(target)
    skip = {int(b) for b in banned} - {target}
    items = []
    for i, _ in retriever.top_k([int(h) for h in history], n + len(skip) + 2 * n):
        i = int(i)
        if i == target or (i not in skip and (allowed is None or allowed[i])):
            items.append(i)
        if len(items) == n:
            break
    if target in items:
        return items, True
    return items[: max(0, n - 1)] + [target], False  # SASRec missed it: it takes the last place


def encode_rank(builder, ex, max_length: int) -> dict | None:
    """The ``score`` ranker's prompt for ``ex.history`` and the candidates' answer lines.

    Too long for ``max_length`` (prompt + the trie's branching tokens, what the model runs): the oldest
    history items go first; None when nothing fits."""
    tok, catalog = builder.tok, builder.catalog
    texts = [P.sequence_answer(P.prompt_title(catalog.titles[i])) for i in ex.candidates]
    lines = [list(t) for t in tok(texts, add_special_tokens=False)["input_ids"]]
    head = P.render_open(tok, "sequence", builder.domain)
    budget = max_length - len(trie_feed(TokenTrie(zip(lines, ex.candidates)))[0])
    for n in range(min(len(ex.history), builder.max_history), 0, -1):
        ids = P.encode_pieces(tok, head, P.sequence_pieces(catalog, ex.history[-n:], max_items=n))[0]
        if len(ids) <= budget:
            return {"input_ids": ids, "labels": [], "task": ex.task, "n_history": n,
                    "candidates": [int(i) for i in ex.candidates], "lines": lines, "target": int(ex.items[0]),
                    "sasrec_z": sasrec_z(builder.retriever, ex.history, ex.candidates)}
    return None


def sasrec_z(retriever, history, items) -> list[float]:
    """SASRec's scores of ``items`` for ``history``, z-scored within the list (as fusion's ``zscore``)."""
    scores = np.asarray(retriever.score_all([int(h) for h in history]), dtype=np.float64)[list(items)]
    return ((scores - scores.mean()) / (scores.std() or 1.0)).tolist()


def rank_loss(model, encoded: dict, device=None, sasrec_weight: float = 0.0) -> tuple[torch.Tensor, int]:
    """(-log P(target | candidates) under the ranker's constrained distribution, tokens run).

    ``sasrec_weight`` > 0 trains the residual instead: the list's logits are the LLM's log-probability
    plus that weight times SASRec's z-scored score, so the gradient is small where SASRec already
    ranks the target high and the LoRA spends itself on what SASRec misses (the fused ranker is what
    the app serves; boosting a weak learner on a strong one's mistakes is what helps it)."""
    decoder = TreeDecoder(model, encoded["input_ids"], device=device)
    trie = TokenTrie(zip(encoded["lines"], encoded["candidates"]))
    logp = trie_logprobs(decoder, trie, as_tensors=True)
    zero = decoder.root_hidden.new_zeros((), dtype=torch.float32)
    scores = torch.stack([zero + logp[i] for i in encoded["candidates"]])  # a lone candidate scores 0.0
    if sasrec_weight:
        scores = scores + sasrec_weight * torch.tensor(encoded["sasrec_z"], dtype=scores.dtype, device=scores.device)
    # log_softmax, not -logp[target] alone: items with the same title share a leaf, and the
    # renormalisation keeps the loss a proper cross-entropy over the list then too.
    target = encoded["candidates"].index(encoded["target"])
    loss = -torch.log_softmax(scores, dim=0)[target]
    return loss, len(decoder.prompt) + len(decoder.tokens)
