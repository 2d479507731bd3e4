"""A token trie over item titles, for constrained decoding and likelihood scoring.

Every item is stored as the token ids of its answer text (title + the separator that ends it),
so the only strings a ranker can emit are whole titles of the items in the trie: the ValidRatio
of a constrained ranker is 1.0 by construction, not by filtering afterwards.

Several items may share one token sequence (duplicate titles): the leaf keeps all of them and
``remove`` takes them out one at a time, so ``pop`` never hands out the same item twice.
"""
from __future__ import annotations

from typing import Iterable, Sequence


class _Node:
    __slots__ = ("children", "values", "count")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.values: list[int] = []  # items whose token sequence ends exactly here
        self.count = 0  # items stored in this subtree (this node included)


class TokenTrie:
    def __init__(self, sequences: Iterable[tuple[Sequence[int], int]] = ()):
        """``sequences``: (token ids, item) pairs."""
        self.root = _Node()
        self._paths: dict[int, tuple[int, ...]] = {}
        for tokens, value in sequences:
            self.add(tokens, value)

    def __len__(self) -> int:
        return self.root.count

    def __contains__(self, value: int) -> bool:
        return value in self._paths

    def items(self) -> list[int]:
        return list(self._paths)

    def path(self, value: int) -> tuple[int, ...]:
        return self._paths[value]

    # -- building --
    def add(self, tokens: Sequence[int], value: int) -> None:
        tokens = tuple(int(t) for t in tokens)
        if not tokens:
            raise ValueError("an item's token sequence is empty; it cannot be decoded")
        if value in self._paths:
            raise ValueError(f"item {value} is already in the trie")
        node = self.root
        node.count += 1
        for t in tokens:
            node = node.children.setdefault(t, _Node())
            node.count += 1
        node.values.append(int(value))
        self._paths[int(value)] = tokens

    def remove(self, value: int) -> bool:
        """Take one item out; branches left empty are pruned, so they are no longer allowed."""
        tokens = self._paths.pop(int(value), None)
        if tokens is None:
            return False
        nodes = [self.root]
        for t in tokens:
            nodes.append(nodes[-1].children[t])
        nodes[-1].values.remove(int(value))
        for node in nodes:
            node.count -= 1
        for parent, t, child in zip(nodes[:-1], tokens, nodes[1:]):
            if child.count == 0:  # the whole branch below held only this item
                del parent.children[t]
                break
        return True

    # -- queries --
    def node(self, prefix: Sequence[int]) -> _Node | None:
        node = self.root
        for t in prefix:
            node = node.children.get(int(t))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int] = ()) -> list[int]:
        """Tokens that may follow ``prefix`` (empty when the prefix is complete or unknown)."""
        node = self.node(prefix)
        return list(node.children) if node is not None else []

    def values_at(self, prefix: Sequence[int]) -> list[int]:
        """Items whose token sequence is exactly ``prefix``."""
        node = self.node(prefix)
        return list(node.values) if node is not None else []

    def forced(self, prefix: Sequence[int]) -> list[int]:
        """The tokens that must follow ``prefix`` because there is no choice: the chain of
        single-child nodes below it, stopping at a branch or where an item ends. A decoder can feed
        these in one forward call instead of one call per token."""
        node = self.node(prefix)
        out: list[int] = []
        while node is not None and len(node.children) == 1 and not node.values:
            (t, node), = node.children.items()
            out.append(t)
        return out
