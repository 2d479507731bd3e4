"""TitleMatcher: trigram fuzzy match with exact / prefix / word bonuses, no model."""
from __future__ import annotations

import numpy as np

from recdemo.data.title_search import TitleMatcher, trigrams

TITLES = ["Toy Story (1995)", "Toy Story 2 (1999)", "Matrix, The (1999)", "Matrix Reloaded, The (2003)",
          "Pulp Fiction (1994)", "Stranger than Fiction (2006)", "Story of Us, The (1999)", "Godfather, The (1972)"]


def best(matcher, query, n=1):
    s = matcher.scores(query)
    return [TITLES[i] for i in np.argsort(-s, kind="stable")[:n]]


def test_trigrams_pad_words():
    assert trigrams("ab") == {"  a", " ab", "ab "}
    assert trigrams("a b") == {"  a", " a ", "  b", " b "}


def test_typos_and_partial_titles():
    m = TitleMatcher(TITLES)
    assert best(m, "toy stroy") == ["Toy Story (1995)"]  # transposition; shorter title wins
    assert best(m, "pulp fictoin") == ["Pulp Fiction (1994)"]
    assert best(m, "matrx") == ["Matrix, The (1999)"]
    assert best(m, "the matrix") == ["Matrix, The (1999)"]  # article moved to the front
    assert best(m, "godfater") == ["Godfather, The (1972)"]
    assert best(m, "toy story 2") == ["Toy Story 2 (1999)"]
    assert best(m, "stranger th") == ["Stranger than Fiction (2006)"]  # prefix


def test_exact_beats_fuzzy_and_empty_query_scores_nothing():
    m = TitleMatcher(TITLES)
    s = m.scores("Toy Story")
    assert s[0] >= 1.5 > s[1] > 1.0  # exact (year-less) key: +0.5; the sequel starts with it: +0.2
    assert not m.scores("").any() and not m.scores("  !!  ").any()
    assert m.scores("zzzz qqqq").max() == 0


def test_scores_cover_every_item_even_with_shared_keys():
    m = TitleMatcher(["Hamlet (1948)", "Hamlet (1996)", "Othello (1995)"])
    s = m.scores("hamlet")
    assert s.shape == (3,) and s[0] == s[1] > s[2]
