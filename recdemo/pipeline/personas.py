"""Ready-made histories built from the catalog itself (the app's persona buttons)."""
from __future__ import annotations

import numpy as np

from recdemo.llm.profile import STOPWORDS, words


def build_personas(dataset, n: int = 12, size: int = 8) -> dict[str, list[str]]:
    catalog = dataset.catalog
    train = dataset.train_sequences()
    pop = np.bincount(np.concatenate(train).astype(np.int64), minlength=len(catalog)) if train else \
        np.zeros(len(catalog), np.int64)
    groups: dict[str, list[int]] = {}
    if any(catalog.attributes):
        suffix = "fan"
        for i, attrs in enumerate(catalog.attributes):
            for a in attrs:
                if a and not a.startswith("("):
                    groups.setdefault(a, []).append(i)
    else:
        suffix = "shopper"
        for i, title in enumerate(catalog.titles):
            for w in set(words(title)):
                if len(w) > 3 and w not in STOPWORDS and w.isalpha():
                    groups.setdefault(w.capitalize(), []).append(i)
    # A taste is narrower than "Drama" (on 45% of movies): groups on more than a quarter of the
    # catalog come last; otherwise the most watched/bought groups first.
    usable = {g: items for g, items in groups.items() if len(items) >= size}
    broad = {g: len(items) > len(catalog) // 4 for g, items in usable.items()}
    weight = {g: int(pop[items].sum()) for g, items in usable.items()}
    out = {}
    for group in sorted(usable, key=lambda g: (broad[g], -weight[g], g))[:n]:
        items = sorted(usable[group], key=lambda i: (len(catalog.attributes[i]) > 3, -pop[i], i))[:size]
        out[f"{group} {suffix}"] = [catalog.titles[i] for i in reversed(items)]  # most popular last (= recent)
    return out
