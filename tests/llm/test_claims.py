"""Claim checks of explanation sentences: titles, categories, numbers, cut-off and empty sentences."""
from __future__ import annotations

import pytest

from recdemo.data import Catalog
from recdemo.llm.claims import CHECKS, ClaimChecker, RationaleChecker, is_category_word

TOY2, WALLACE, MIB, MURDER, INTOUCHABLES, MATRIX, SCREAM = range(7)


@pytest.fixture
def movies():
    return Catalog(
        ids=[str(i) for i in range(7)],
        titles=["Toy Story 2 (1999)", "Wallace & Gromit: The Wrong Trousers (1993)",
                "Men in Black (a.k.a. MIB) (1997)", "Perfect Murder, A (1998)", "Intouchables (2011)",
                "Matrix, The (1999)", "Scream (1996)"],
        attributes=[("Adventure", "Animation", "Children", "Comedy"), ("Animation", "Children", "Comedy", "Crime"),
                    ("Action", "Comedy", "Sci-Fi"), ("Thriller",), ("Comedy", "Drama"),
                    ("Action", "Sci-Fi", "Thriller"), ("Horror", "Mystery")],
        attribute_name="genres")


def cooc(*items, n=12):
    return [{"history_index": h, "kind": "co-occurrence", "value": n, "co_occurrence": n} for h in items]


def checker(movies, history, item, evidence):
    return ClaimChecker.for_item(movies, history, item, evidence)


# -- the four defects of issue 17: each fails a check (the old check, titles by substring only, passed them) --
def test_cut_off_inside_a_title_fails(movies):
    chk = checker(movies, [TOY2, WALLACE], MIB, cooc(TOY2, WALLACE))
    s = ('Like "Toy Story 2" and "Wallace & Gromit: The Wrong Trousers", "Men in Black" (Action, Comedy, Sci-Fi) '
         'shares similarities with both "Toy.')
    assert "cut_off" in chk.failures(s)


def test_a_title_not_in_the_history_fails_even_when_it_differs_by_the_article(movies):
    chk = checker(movies, [TOY2, MURDER], MIB, cooc(TOY2))
    assert chk.problems('Like "Toy Story 2", "Men in Black" is as tense as "The Perfect Murder".')["title"] == \
        ["The Perfect Murder"]
    title_only = RationaleChecker([movies.titles[MURDER]])
    assert title_only.problems("Fans of The Perfect Murder.") == ["Fans of The Perfect Murder"]
    assert "title" not in chk.failures('Like "A Perfect Murder", "Men in Black" is a tense sci-fi comedy.')


def test_a_genre_the_item_and_the_cited_items_lack_fails(movies):
    chk = checker(movies, [TOY2, MURDER], INTOUCHABLES, cooc(MURDER))
    s = '"Intouchables" is a comedy film that blends elements of horror and comedy.'
    assert chk.problems(s)["category"] == ["horror"]
    assert "category" in chk.failures('"Intouchables" is a scary comedy.')  # a synonym claims Horror too
    assert chk.problems('"Intouchables" is a comedy-horror about friendship.')["category"] == ["comedy-horror"]
    assert chk.failures('"Intouchables" is a comedy and a drama about an unlikely friendship.') == []
    # a genre of a history item the sentence names is fine: "thriller" is "A Perfect Murder"'s
    assert chk.failures('Like the thriller "A Perfect Murder", "Intouchables" is a drama about trust.') == []


def test_empty_phrases_fail(movies):
    chk = checker(movies, [TOY2, WALLACE], MIB, cooc(TOY2))
    for s in ['"Men in Black" is a classic example of a film that has a timeless appeal.',
              '"Men in Black" shares similarities with both films.',
              '"Men in Black" has a genre, story, and tone in common with both.']:
        assert chk.failures(s) == ["empty"], s
    assert chk.failures('"Men in Black" is a fast comedy about aliens hiding among people.') == []


# -- each check on its own --
def test_titles_in_full_or_shortened(movies):
    chk = checker(movies, [WALLACE, MATRIX], MIB, cooc(WALLACE))
    ok = ['Like Wallace & Gromit, "Men in Black" mixes slapstick with alien invaders.',
          'Fans of The Matrix get sci-fi action in "Men in Black (a.k.a. MIB)".',
          'Like "The Matrix", "MIB" is sci-fi action with sharp jokes.']
    for s in ok:
        assert "title" not in chk.failures(s), s
    assert chk.problems('Like "The Matrix", "Men in Black" recalls "Independence Day".')["title"] == \
        ["Independence Day"]
    assert chk.problems("It is a sci-fi romp like Jurassic Park.")["title"] == ["Jurassic Park"]


def test_numbers_must_come_from_the_evidence(movies):
    chk = checker(movies, [TOY2, MATRIX], MIB, cooc(MATRIX, n=180))
    assert chk.failures('180 users who watched "The Matrix" also watched "Men in Black".') == []
    assert chk.problems('200 users who watched "The Matrix" also watched "Men in Black".')["number"] == ["200"]
    assert "number" not in chk.failures('Like "The Matrix", "Men in Black" is 1990s sci-fi comedy.')
    assert "number" in chk.failures('Like "The Matrix", "Men in Black" is 1980s sci-fi comedy.')


def test_cut_off_sentences(movies):
    chk = checker(movies, [TOY2], MIB, cooc(TOY2))
    for s in ['"Men in Black" is a sci-fi comedy with', '"Men in Black" is a sci-fi comedy about the.',
              '"Men in Black" is a sci-fi comedy (with aliens.']:
        assert "cut_off" in chk.failures(s), s
    assert "cut_off" not in chk.failures('"Men in Black" is a sci-fi comedy with aliens!')


def test_failures_are_in_check_order(movies):
    chk = checker(movies, [TOY2], MIB, cooc(TOY2))
    failed = chk.failures('"Men in Black" shares similarities with "Jaws", 99 horror films and')
    assert failed == [c for c in CHECKS if c in failed] and set(failed) == set(CHECKS) - {"empty"}


def test_is_category_word(movies):
    assert is_category_word("Sci-Fi", movies) and is_category_word("comedies", movies)
    assert is_category_word("action, thriller", movies)
    assert not is_category_word("1990s", movies) and not is_category_word("dark humor", movies)
    assert not is_category_word("space", movies)
