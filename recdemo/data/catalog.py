"""The item catalog: every item's id, title and attributes, addressed by a dense index.

Everywhere outside SASRec an item is its 0-based catalog index (``int``); the external id
(a string, as in the source file) only appears at the edges (files, UI).
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field


def clean_title(title: str) -> str:
    """Decode HTML entities (``&amp;`` -> ``&``) and collapse whitespace (titles may hold newlines)."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(str(title)))).strip()


def normalize_title(title: str) -> str:
    """Key for exact-but-forgiving title lookup: case, accents and punctuation ignored."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


@dataclass
class Catalog:
    ids: list[str]
    titles: list[str]
    attributes: list[tuple[str, ...]] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    attribute_name: str = "categories"  # "genres" for movies

    def __post_init__(self):
        n = len(self.ids)
        if not self.attributes:
            self.attributes = [()] * n
        if not self.descriptions:
            self.descriptions = [""] * n
        self.titles = [clean_title(t) for t in self.titles]
        self._by_id = {item_id: i for i, item_id in enumerate(self.ids)}
        self._by_title: dict[str, int] = {}
        for i, t in enumerate(self.titles):
            self._by_title.setdefault(normalize_title(t), i)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, item_id) -> int:
        """Catalog index of an external id; KeyError if unknown."""
        return self._by_id[str(item_id)]

    def find_title(self, title: str) -> int | None:
        """Index of the item with this title (case/punctuation-insensitive), or None."""
        return self._by_title.get(normalize_title(title))

    def describe(self, index: int, with_attributes: bool = True) -> str:
        """Title plus attributes, as prompts and explanations show an item."""
        attrs = self.attributes[index]
        if with_attributes and attrs:
            return f"{self.titles[index]} ({', '.join(attrs)})"
        return self.titles[index]

    def item(self, index: int) -> dict:
        return {"index": index, "id": self.ids[index], "title": self.titles[index],
                "attributes": list(self.attributes[index])}
