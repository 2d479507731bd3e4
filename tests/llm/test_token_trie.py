import pytest

from recdemo.llm.token_trie import TokenTrie


def make():
    # items 0 and 1 share the prefix (5, 6); item 2 starts elsewhere; item 3 is a duplicate of item 0
    return TokenTrie([((5, 6, 7, 9), 0), ((5, 6, 8, 9), 1), ((4, 9), 2), ((5, 6, 7, 9), 3)])


def test_prefix_sharing_and_allowed_tokens():
    trie = make()
    assert len(trie) == 4
    assert sorted(trie.allowed([])) == [4, 5]
    assert trie.allowed([5]) == [6]  # the shared prefix is one path, not two
    assert sorted(trie.allowed([5, 6])) == [7, 8]
    assert trie.allowed([5, 6, 7, 9]) == []  # complete
    assert trie.allowed([7]) == []  # not a prefix of any item
    assert trie.node([5, 6]).count == 3


def test_values_and_forced_continuations():
    trie = make()
    assert trie.values_at([5, 6, 7, 9]) == [0, 3]
    assert trie.values_at([5, 6]) == []
    assert trie.forced([5]) == [6]  # one choice only, stops at the branch
    assert trie.forced([5, 6, 8]) == [9]  # runs to the end of the item
    assert trie.forced([]) == []  # the root branches
    assert trie.forced([4, 9]) == []  # already complete


def test_removal_prunes_only_what_no_item_uses():
    trie = make()
    assert trie.remove(1)
    assert trie.allowed([5, 6]) == [7]  # item 1's branch is gone
    assert not trie.remove(1)  # already removed
    assert trie.remove(0)
    assert trie.values_at([5, 6, 7, 9]) == [3]  # the duplicate keeps the path alive
    assert trie.remove(3)
    assert trie.allowed([]) == [4]
    assert len(trie) == 1 and 2 in trie and 0 not in trie


def test_remove_then_add_restores():
    trie = make()
    path = trie.path(2)
    trie.remove(2)
    assert trie.allowed([]) == [5]
    trie.add(path, 2)
    assert sorted(trie.allowed([])) == [4, 5]


def test_bad_input():
    trie = TokenTrie()
    with pytest.raises(ValueError):
        trie.add([], 1)
    trie.add([1, 2], 1)
    with pytest.raises(ValueError):
        trie.add([1, 3], 1)
