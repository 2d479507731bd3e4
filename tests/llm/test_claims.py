"""Claim checks of explanation sentences: titles, categories, numbers, cut-off and empty sentences."""
from __future__ import annotations

import pytest

from recdemo.data import Catalog
from recdemo.llm.claims import CHECKS, ClaimChecker, RationaleChecker, is_category_word, product_kind

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
    assert chk.failures('"Intouchables" is a comedy and a drama.') == []
    # a genre of a history item the sentence names is fine: "thriller" is "A Perfect Murder"'s
    assert chk.failures('Like the thriller "A Perfect Murder", "Intouchables" is a drama.') == []


def test_a_claim_the_data_cannot_check_fails(movies):
    """True or not, "an unlikely friendship" is nothing the data holds: only words of the item's title, a
    cited or named title, and the words the other checks judge (genres, numbers) may carry a claim."""
    chk = checker(movies, [TOY2, MURDER], INTOUCHABLES, cooc(MURDER))
    assert chk.problems('"Intouchables" is a comedy and a drama about an unlikely friendship.') == \
        {"unbacked": ["unlikely", "friendship"]}
    assert chk.failures('"Intouchables" is a superhero comedy, and 12 fans of "A Perfect Murder" watched it too.') \
        == ["unbacked"]
    assert chk.failures('"Intouchables" is a comedy, and 12 fans of "A Perfect Murder" watched it too.') == []
    # words of the titles it cites back it ("murder"), as do a genre's word forms ("children's")
    assert chk.failures('Like "A Perfect Murder", "Intouchables" is no murder story but a comedy.') == []
    kids = checker(movies, [TOY2], TOY2, cooc(TOY2))
    assert "unbacked" not in kids.failures('"Toy Story 2" is a children\'s comedy.')


def test_what_the_item_is_may_not_borrow_another_titles_words(movies):
    """A cited title's words back the sentence's other claims ("fans of Toy Story"), not what the item
    is: '"Scream" is a Toy Story horror film' claims a franchise it is not in."""
    chk = checker(movies, [TOY2, MURDER], SCREAM, cooc(TOY2))
    assert chk.problems('Like "Toy Story 2", "Scream" is a Toy Story horror film.') == \
        {"unbacked": ["Toy", "Story"]}
    assert chk.problems('"Scream" is a perfect murder mystery, and 12 fans of "A Perfect Murder" watched it too.') \
        == {"unbacked": ["murder"]}
    assert chk.failures('Like "Toy Story 2", "Scream" is a horror film, and 12 fans of Toy Story watched it too.') \
        == []
    # its own title's words and its genres may say what it is
    assert chk.failures('"Scream" is a scream of a horror mystery.') == []


def test_empty_phrases_fail(movies):
    chk = checker(movies, [TOY2, WALLACE], MIB, cooc(TOY2))
    for s in ['"Men in Black" is a classic example of a film that has a timeless appeal.',
              '"Men in Black" shares similarities with both films.',
              '"Men in Black" has a genre, story, and tone in common with both.']:
        assert chk.failures(s) == ["empty"], s
    assert chk.failures('"Men in Black" is a sci-fi comedy.') == []
    assert chk.failures('"Men in Black" is a fast comedy about aliens hiding among people.') == ["unbacked"]


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
              '"Men in Black" is a sci-fi comedy (with aliens.', '"Men in Black" is a sci-fi comedy about the of aliens.']:
        assert "cut_off" in chk.failures(s), s
    assert "cut_off" not in chk.failures('"Men in Black" is a sci-fi comedy with aliens!')
    # a title between an article and the next word is no missing word
    assert "cut_off" not in chk.failures('Fans of the "Toy Story 2" and "Men in Black" comedies.')


def test_failures_are_in_check_order(movies):
    chk = checker(movies, [TOY2], MIB, cooc(TOY2))
    failed = chk.failures('"Men in Black" shares similarities with "Jaws", 99 gory horror films and')
    assert failed == [c for c in CHECKS if c in failed] and set(failed) == set(CHECKS) - {"empty"}


def test_is_category_word(movies):
    assert is_category_word("Sci-Fi", movies) and is_category_word("comedies", movies)
    assert is_category_word("action, thriller", movies)
    assert not is_category_word("1990s", movies) and not is_category_word("dark humor", movies)
    assert not is_category_word("space", movies)


# -- counts said of a title, and products (no categories: the kind of product plays that part) --
def test_a_count_said_of_a_title_is_that_titles_count(movies):
    ev = [{"history_index": TOY2, "title": movies.titles[TOY2], "kind": "co-occurrence", "value": 30,
           "co_occurrence": 30},
          {"history_index": MATRIX, "title": movies.titles[MATRIX], "kind": "co-occurrence", "value": 7,
           "co_occurrence": 7}]
    chk = checker(movies, [TOY2, MATRIX], MIB, ev)
    assert chk.failures('Like "Toy Story 2", "Men in Black" is a comedy, and 30 fans of "Toy Story 2" watched it too.') \
        == []
    wrong = 'Like "Toy Story 2", "Men in Black" is a comedy, and 30 fans of "The Matrix" watched it too.'
    assert chk.problems(wrong)["number"] == ['30 of "The Matrix"']  # 30 is a count, but Toy Story 2's
    assert chk.corrected_counts(wrong).endswith('and 7 fans of "The Matrix" watched it too.')
    assert chk.failures(chk.corrected_counts(wrong)) == []
    assert chk.failures('"Men in Black" is a comedy, and 7 users who watched "The Matrix" also watched it.') == []
    bare = 'Like "Toy Story 2", "Men in Black" is a comedy, and 12 users watched both.'  # 12: no one's count
    assert chk.corrected_counts(bare, 30).endswith("and 30 users watched both.")
    assert chk.corrected_counts(bare) == bare  # no count to put in
    assert chk.corrected_counts(bare.replace("12", "7"), 30) == bare.replace("12", "7")  # 7 is a true count


@pytest.fixture
def products():
    named = ["Maybelline Shinesensational Lip Gloss", "Maybelline Mineral Power Concealer", "Olay Face Cream",
             "Kleancolor Nail Polish Red"]
    fillers = [f"Brand{i} {kind}" for i in range(6) for kind in
               ("Lip Gloss", "Concealer", "Mascara", "Hair Conditioner", "Nail Polish", "Face Cream")]
    titles = named + fillers
    return Catalog(ids=[str(i) for i in range(len(titles))], titles=titles, attributes=[()] * len(titles),
                   attribute_name="categories")


GLOSS, CONCEALER, CREAM, POLISH = range(4)


def product_checker(products, item=CONCEALER, cited=GLOSS, n=3):
    ev = [{"history_index": cited, "title": products.titles[cited], "kind": "co-occurrence", "value": n,
           "co_occurrence": n}]
    return ClaimChecker.for_item(products, [cited, CREAM], item, ev)


def test_what_a_product_is_said_to_be_comes_from_its_own_title(products):
    chk = product_checker(products)
    start = 'Like "Maybelline Shinesensational Lip Gloss", "Maybelline Mineral Power Concealer"'
    assert chk.failures(f"{start} is a concealer, and 3 users bought both.") == []
    assert chk.failures(f"{start} is a makeup product, and 3 users bought both.") == []  # umbrella word
    # a kind the cited item has, said of the recommended one: false
    assert chk.problems(f"{start} is a lip gloss, and 3 users bought both.")["category"] == ["gloss"]
    # a kind no title backs
    assert chk.problems(f"{start} is a hair conditioner.")["category"] == ["conditioner"]
    assert "category" in chk.failures(f"{start} is a concealer that works like a nail polish.")
    # a kind word says something: a one-word true kind is not empty
    assert chk.failures(f"{start} is a concealer.") == []
    # a movie catalog has categories: no kind check there
    assert ClaimChecker.for_item(Catalog(ids=["0"], titles=["Up (2009)"], attributes=[("Comedy",)],
                                         attribute_name="genres"), [], 0).kind_vocab == set()


def test_stock_product_phrases_are_empty(products):
    chk = product_checker(products)
    start = 'Like "Maybelline Shinesensational Lip Gloss", "Maybelline Mineral Power Concealer"'
    for written in ("is a product that combines a range of products.", "is sold in a limited edition.",
                    "is a product that offers a variety of products to customers."):
        assert "empty" in chk.failures(f"{start} {written}", written), written


def test_product_kind_is_the_last_kind_word_before_the_details(products, movies):
    assert product_kind(products, CONCEALER) == "concealer"
    assert product_kind(products, POLISH) == "polish"  # "Red" is a shade, not a kind
    assert product_kind(products, GLOSS) == "gloss"
    assert product_kind(movies, TOY2) is None  # categories say what a movie is
