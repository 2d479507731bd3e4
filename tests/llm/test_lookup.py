"""llm/lookup.py: drafts copy what followed the row's last tokens before; the model keeps what it agrees with."""
from __future__ import annotations

from recdemo.llm.lookup import Lookup, accepted, draft


def test_a_draft_continues_the_latest_earlier_occurrence_of_the_longest_suffix():
    #          0  1  2  3  4  5  6  7  8  9 10 11
    context = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 6, 7]
    # [6, 7] is the longest suffix seen before; its latest earlier occurrence (at 6) went on with 2, 3, 6
    assert draft(context, ngram=3, k=3) == [2, 3, 6]
    assert draft(context, ngram=3, k=1) == [2]
    # a three-token match beats a nearer shorter one: [1, 2, 3] at 0 is followed by 4, not by the 9 after 3
    assert draft([1, 2, 3, 4, 3, 9, 1, 2, 3], ngram=3, k=2) == [4, 3]
    assert draft([1, 2, 3, 4, 3, 9, 1, 2, 3], ngram=1, k=2) == [9, 1]  # only the last token: the latest 3


def test_no_earlier_occurrence_or_no_room_gives_no_draft():
    assert draft([1, 2, 3, 4], ngram=3, k=3) == []
    assert draft([7], ngram=3, k=3) == []
    assert draft([1, 2, 1, 2], ngram=2, k=0) == []
    assert draft([1, 2, 1, 2], ngram=2, k=5) == [1, 2]  # what there is after the match, no more


def test_accepted_counts_drafts_up_to_the_first_disagreement():
    # predicted[j]: the model's token after the last token and the first j drafts
    assert accepted([4, 5, 6], [4, 5, 9, 1]) == 2
    assert accepted([4, 5, 6], [4, 5, 6, 1]) == 3
    assert accepted([4, 5, 6], [3, 5, 6, 1]) == 0  # a wrong first draft makes the rest worthless
    assert accepted([], [8]) == 0


def test_drafts_fit_the_positions_a_step_may_feed():
    lookup = Lookup(tokens=3, ngram=3, positions=24)
    assert [lookup.length(rows) for rows in (1, 6, 7, 8, 12, 13, 48)] == [3, 3, 2, 2, 1, 0, 0]
    assert Lookup(tokens=0, positions=24).length(1) == 0  # off
    assert Lookup(tokens=3, positions=0).length(1) == 0
