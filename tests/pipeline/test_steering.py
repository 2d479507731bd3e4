"""Steering: the user's edit of the profile, what changed, and which candidates it moves."""
import pytest

from recdemo.config import LimitsConfig
from recdemo.pipeline.steering import ProfileEdit, Steer, edit_profile, lift
from recdemo.records import Keyword, Profile, RankedItem


@pytest.fixture
def base(toy_dataset):
    cat = toy_dataset.catalog
    comedy = [i for i in range(12) if "Comedy" in cat.attributes[i]]
    return Profile(keywords=[Keyword("Comedy", comedy, True), Keyword("space opera", [], False),
                             Keyword("Drama", [1], True)], summary="Likes comedies.", prompt="P", raw="R")


def test_edit_keeps_grounding_of_kept_keywords_and_marks_added_ones(toy_dataset, base):
    history = list(range(12))
    edit = ProfileEdit(["comedy", " Horror ", "Horror", "**", "x" * 60], "")
    profile, steer = edit_profile(toy_dataset.catalog, history, base, edit)
    assert [k.text for k in profile.keywords] == ["Comedy", "Horror"]  # cleaned, deduplicated, kept spelling
    assert profile.keywords[0] is base.keywords[0]
    horror = profile.keywords[1]
    assert horror.source == "user" and horror.grounded
    assert horror.support == [i for i in history if "Horror" in toy_dataset.catalog.attributes[i]]
    assert profile.summary == "Likes comedies." and (profile.prompt, profile.raw) == ("P", "R")
    assert steer == Steer(added=["Horror"], removed=["Drama"], summary_changed=False)  # ungrounded: not "removed"


def test_edit_of_the_sentence_alone_is_a_steer(toy_dataset, base):
    profile, steer = edit_profile(toy_dataset.catalog, [0], base, ProfileEdit.of(
        {"keywords": ["Comedy", "Drama", "space opera"], "summary": "Only   dark comedies."}))
    assert profile.summary == "Only dark comedies." and steer and not steer.added and not steer.removed
    assert not edit_profile(toy_dataset.catalog, [0], base, ProfileEdit(["Comedy", "Drama"], ""))[1]


def test_edit_is_bounded_and_checked(toy_dataset, base):
    many = ProfileEdit([f"word{i}" for i in range(40)])
    assert len(edit_profile(toy_dataset.catalog, [0], base, many)[0].keywords) == LimitsConfig().max_profile_keywords
    assert len(edit_profile(toy_dataset.catalog, [0], base, many, max_keywords=3)[0].keywords) == 3
    with pytest.raises(ValueError, match="keywords"):
        ProfileEdit.of("horror")


def test_lift_orders_added_matches_first_and_removed_only_matches_last(toy_dataset):
    cat = toy_dataset.catalog
    items = list(range(12))  # the ranker's order
    ranked = [RankedItem(i, 0.0, 0.0, n) for n, i in enumerate(items, 1)]
    steer = Steer(added=["horror"], removed=["comedy"])
    top, info = lift(cat, ranked, steer, k=12)
    order = [r.index for r in top]
    group = [1 if "Horror" in cat.attributes[i] else (-1 if "Comedy" in cat.attributes[i] else 0) for i in order]
    assert group == sorted(group, reverse=True) and 1 in group and -1 in group
    for g in (1, 0, -1):  # the ranker's order within each group
        members = [i for i, x in zip(order, group) if x == g]
        assert members == sorted(members)
    assert all(info[i]["lift"] == g for i, g in zip(order, group) if g)
    assert len(lift(cat, ranked, steer, k=3)[0]) == 3
