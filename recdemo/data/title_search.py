"""Typo-tolerant title lookup without a model: character trigrams, exact and prefix matches.

Each item is known under a few keys (its normalised title, "The Matrix" for "Matrix, The (1999)",
the title without its year). A query is compared with every key by shared character trigrams
(pg_trgm style: words padded with spaces, so "toy stroy" still shares most trigrams with
"toy story"), and an item scores its best key. ``TextIndex`` adds embedding similarity on top.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from recdemo.data.catalog import normalize_title, title_variants


def trigrams(text: str) -> set[str]:
    """Trigrams of each word padded as "  word " (a word's start weighs more than its end)."""
    out: set[str] = set()
    for word in text.split():
        padded = f"  {word} "
        out.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return out


def within_one_edit(a: str, b: str) -> bool:
    """True when ``b`` is ``a`` with one letter deleted, inserted, replaced, or two neighbours swapped."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k, (x, y) in enumerate(zip(short, long_)) if x != y), len(short))
    return short[i:] == long_[i + 1:]


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


class TitleMatcher:
    """Scores every item's title against a query; higher is better, about 0..1.6."""

    FUZZY_MIN_LEN = 4  # shorter words match exactly only ("hat" is not a typo of "heat")
    FUZZY_CREDIT = 0.8  # a word one edit away counts this much of an exact word

    EXACT_BONUS = 0.5  # the query is one of the item's keys
    PREFIX_BONUS = 0.2  # a key starts with the query (partial titles typed from the start)
    WORDS_BONUS = 0.1  # every query word is a whole word of the key, in any order

    def __init__(self, titles: list[str]):
        keys, owners = [], []
        for i, title in enumerate(titles):
            seen = set()
            for variant in [title] + title_variants(title):
                key = normalize_title(variant)
                if key and key not in seen:
                    seen.add(key)
                    keys.append(key)
                    owners.append(i)
        self.n_items = len(titles)
        self.keys = keys
        self.owners = np.asarray(owners, dtype=np.int64)
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for r, key in enumerate(keys):
            for g in trigrams(key):
                rows.append(r)
                cols.append(vocab.setdefault(g, len(vocab)))
        self.vocab = vocab
        self.matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                        shape=(len(keys), max(len(vocab), 1)))
        self.key_sizes = np.asarray(self.matrix.sum(axis=1)).ravel()
        self._word_sets = [set(k.split()) for k in keys]
        # Whole-word matching, one typo allowed: trigrams fall apart on short words ("sherk" shares
        # one trigram with "shrek"). Words are found through their one-letter deletions (SymSpell).
        words: dict[str, list[int]] = {}
        for r, ws in enumerate(self._word_sets):
            for w in ws:
                words.setdefault(w, []).append(r)
        self._postings = {w: np.asarray(rows, dtype=np.int64) for w, rows in words.items()}
        self._by_deletion: dict[str, list[str]] = {}
        for w in words:
            if len(w) >= self.FUZZY_MIN_LEN - 1:
                for d in _deletions(w) | {w}:
                    self._by_deletion.setdefault(d, []).append(w)
        self._key_words = np.asarray([max(len(ws), 1) for ws in self._word_sets], dtype=np.float32)

    def _word_matches(self, word: str) -> list[tuple[str, float]]:
        """Catalog words matching ``word``: itself (credit 1) and, if long enough, one edit away."""
        out = [(word, 1.0)] if word in self._postings else []
        if len(word) >= self.FUZZY_MIN_LEN:
            near = set()
            for d in _deletions(word) | {word}:
                near.update(self._by_deletion.get(d, ()))
            out += [(w, self.FUZZY_CREDIT) for w in near if w != word and within_one_edit(word, w)]
        return out

    def _word_scores(self, q_words: list[str]) -> np.ndarray:
        """Per key: 0.6 * share of query words found + 0.4 * share of the key's words matched."""
        found = np.zeros(len(self.keys), dtype=np.float32)
        for word in q_words:
            credit = np.zeros(len(self.keys), dtype=np.float32)
            for w, c in self._word_matches(word):
                rows = self._postings[w]
                credit[rows] = np.maximum(credit[rows], c)
            found += credit
        return 0.6 * found / len(q_words) + 0.4 * np.minimum(found / self._key_words, 1.0)

    def scores(self, query: str) -> np.ndarray:
        """Lexical score per item (0 for items sharing nothing with the query)."""
        out = np.zeros(self.n_items, dtype=np.float32)
        q = normalize_title(query)
        if not q:
            return out
        grams = trigrams(q)
        idx = [self.vocab[g] for g in grams if g in self.vocab]
        if idx:
            qvec = np.zeros(self.matrix.shape[1], dtype=np.float32)
            qvec[idx] = 1.0
            shared = self.matrix @ qvec
            # containment: how much of the query the key holds (partial titles score high);
            # jaccard: how little else the key holds (prefers "Toy Story" over "Toy Story 2").
            containment = shared / len(grams)
            jaccard = shared / (len(grams) + self.key_sizes - shared)
            key_score = 0.6 * containment + 0.4 * jaccard
        else:
            key_score = np.zeros(len(self.keys), dtype=np.float32)
        key_score = np.maximum(key_score, self._word_scores(q.split()))
        q_words = set(q.split())
        for r in np.flatnonzero(key_score >= 0.5):  # few keys: cheap exact/prefix/word checks
            key = self.keys[r]
            if key == q:
                key_score[r] += self.EXACT_BONUS
            elif key.startswith(q):
                key_score[r] += self.PREFIX_BONUS
            elif q_words <= self._word_sets[r]:
                key_score[r] += self.WORDS_BONUS
        np.maximum.at(out, self.owners, key_score.astype(np.float32))
        return out
