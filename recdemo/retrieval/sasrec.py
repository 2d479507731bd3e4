"""SASRec (Kang & McAuley, 2018): a causal self-attention encoder over a user's item sequence.

Items enter as catalog index + 1 (0 is padding); this shift is private to this module: every
public method takes and returns 0-based catalog indices. Sequences are LEFT-padded, so the last
position always holds the newest item and its hidden state is the query for "what comes next".
Input and output share the item embedding table: score(item) = hidden · item_emb[item].
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SASRecConfig:
    n_items: int
    maxlen: int = 200
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + ffn(LN(x))."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden size {cfg.hidden} must be divisible by the number of heads {cfg.heads}")
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.hidden))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(b, length, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.maxlen, cfg.hidden)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.feature_proj: nn.Linear | None = None  # training-time item features, see attach_item_features
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    # -- item side features (training only) --
    def attach_item_features(self, features: torch.Tensor) -> None:
        """Add a learned projection of fixed item features ([n_items, d], e.g. text embeddings) to every
        item's embedding, so items with few interactions borrow from items that read alike.
        ``fold_item_features`` bakes the sum into ``item_emb``: a saved model is a plain SASRec."""
        if features.shape[0] != self.cfg.n_items:
            raise ValueError(f"{features.shape[0]} feature rows for {self.cfg.n_items} items")
        padded = torch.cat([features.new_zeros(1, features.shape[1]), features.float()])
        self.register_buffer("item_features", padded, persistent=False)
        self.feature_proj = nn.Linear(features.shape[1], self.cfg.hidden, bias=False)
        self._init(self.feature_proj)

    @torch.no_grad()
    def fold_item_features(self) -> None:
        if self.feature_proj is not None:
            self.item_emb.weight.copy_(self.item_table())
            self.feature_proj = None
            del self.item_features

    def item_table(self) -> torch.Tensor:
        """[n_items + 1, hidden]: the embedding of every shifted id (row 0 = padding, zero)."""
        if self.feature_proj is None:
            return self.item_emb.weight
        return self.item_emb.weight + self.feature_proj(self.item_features)

    # -- encoding --
    def forward(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """seq: [B, L] shifted ids (0 = pad, left-padded), L <= maxlen -> hidden states [B, L, hidden].
        ``table``: ``item_table()`` when the caller already has it (a training step uses it twice).

        Positions count from the right (the last column is always position maxlen - 1), so a batch
        may drop its all-padding leading columns without changing any result.
        """
        length = seq.shape[1]
        if length > self.cfg.maxlen:
            raise ValueError(f"sequence of {length} items is longer than maxlen {self.cfg.maxlen}")
        valid = seq > 0
        table = self.item_table() if table is None else table
        x = F.embedding(seq, table) * math.sqrt(self.cfg.hidden)
        x = x + self.pos_emb(torch.arange(self.cfg.maxlen - length, self.cfg.maxlen, device=seq.device))[None]
        x = self.emb_drop(x) * valid[..., None]
        # Causal, and pads are never attended to; every position may see itself so that pad rows
        # (whose output is ignored) never have an all-masked row (NaN in softmax).
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        mask = (causal & valid[:, None, :]) | eye
        for block in self.blocks:
            x = block(x, mask[:, None])
        return self.ln_f(x)

    @property
    def output_embeddings(self) -> torch.Tensor:
        """[n_items, hidden]: row i scores catalog item i (padding row dropped)."""
        return self.item_table()[1:]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over every catalog item for hidden states [..., hidden] -> [..., n_items]."""
        return hidden @ self.output_embeddings.T

    # -- inference on 0-based catalog indices --
    def pad_histories(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Left-pad the last ``maxlen`` items of each history (catalog indices) into a [B, L] tensor
        (L = the longest history, at most maxlen; at least 1)."""
        device = self.item_emb.weight.device
        width = max([min(len(h), self.cfg.maxlen) for h in histories] + [1])
        out = np.zeros((len(histories), width), dtype=np.int64)
        for row, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)[-width:]
            if len(h):
                out[row, -len(h):] = h + 1
        return torch.from_numpy(out).to(device)

    @torch.no_grad()
    def encode(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Query vector per history: the last position's hidden state, [B, hidden]."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(self.pad_histories(histories))[:, -1]
        finally:
            self.train(was_training)

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Dense scores [B, n_items] for each history (history items NOT excluded)."""
        return self.logits(self.encode(histories))
