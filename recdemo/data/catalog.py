"""The item catalog: every item's id, title and attributes, addressed by a dense index.

Everywhere outside SASRec an item is its 0-based catalog index (``int``); the external id
(a string, as in the source file) only appears at the edges (files, UI).
"""
from __future__ import annotations

import html
import html.entities
import re
import unicodedata
from dataclasses import dataclass, field


_ENTITY = re.compile(r"&(?:#[0-9]{1,7};?|#[xX][0-9a-fA-F]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31};)")


def decode_entities(text: str) -> str:
    """Decode HTML entities: named ones that end with ';' (``&amp;`` -> ``&``) and numeric ones
    (``&#39;``, ``&#8482`` -> ``™``), twice, for double-escaped text (``&amp;quot;``). Bare ``&``
    words such as ``AT&T`` or ``Salt &notes`` are left alone (``html.unescape`` alone would turn
    ``&not`` into a negation sign)."""
    for _ in range(2):
        text = _ENTITY.sub(_decode_entity, text)
    return text


def _decode_entity(m: re.Match) -> str:
    entity = m.group(0)
    if entity[1] == "#" or entity[1:] in html.entities.html5:  # "&notanentity;" is not "&not;"
        return html.unescape(entity)
    return entity


def clean_title(title: str) -> str:
    """Decode HTML entities and collapse whitespace (titles may hold newlines)."""
    return re.sub(r"\s+", " ", decode_entities(str(title))).strip()


def normalize_title(title: str) -> str:
    """Key for exact-but-forgiving title lookup: case, accents and punctuation ignored."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


# MovieLens files titles as "Matrix, The (1999)"; people type "The Matrix".
_TRAILING_ARTICLE = re.compile(
    r"^(?P<main>.+?), (?P<art>The|A|An|Les|La|Le|L'|Il|Die|Der|Das|El|Los|Las)(?P<rest>\s*\(.*)?$")
_YEAR = re.compile(r"\s*\((?:\d{4}(?:[-–]\d{0,4})?)\)\s*$")


def natural_title(title: str) -> str:
    """The title as people say it: "Matrix, The (1999)" -> "The Matrix (1999)"; others unchanged."""
    m = _TRAILING_ARTICLE.match(title)
    if not m:
        return title
    art = m.group("art")
    return f"{art}{'' if art.endswith(chr(39)) else ' '}{m.group('main')}{m.group('rest') or ''}"


_PAREN = re.compile(r"\s*\(([^()]*)\)")


def title_variants(title: str) -> list[str]:
    """Other ways people write a title: article moved to the front, without the year, without the
    parenthesised alternative titles, and each alternative title ("Seven (a.k.a. Se7en) (1995)"
    -> "Seven", "Se7en")."""
    natural = natural_title(title)
    out = [natural] if natural != title else []
    for t in [title] + out[:1]:
        bare = _YEAR.sub("", t)
        if bare != t and bare:
            out.append(bare)
        main = _PAREN.sub("", t).strip()
        if main and main not in (t, bare):
            out.append(main)
    for alt in _PAREN.findall(title):
        alt = re.sub(r"^(a\.k\.a\.|aka)\s+", "", alt.strip(), flags=re.I)
        if alt and not re.fullmatch(r"[\d\s–-]*", alt):
            out.append(natural_title(alt))
    return list(dict.fromkeys(v for v in out if v != title))


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
        # Variants ("The Matrix", "Toy Story") only where they name exactly one item.
        owners: dict[str, set[int]] = {}
        for i, t in enumerate(self.titles):
            for v in title_variants(t):
                owners.setdefault(normalize_title(v), set()).add(i)
        for key, items in owners.items():
            if len(items) == 1 and key not in self._by_title:
                self._by_title[key] = next(iter(items))

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, item_id) -> int:
        """Catalog index of an external id; KeyError if unknown."""
        return self._by_id[str(item_id)]

    def find_title(self, title: str) -> int | None:
        """Index of the item with this title (case/punctuation-insensitive; "The Matrix" and a title
        without its year work when they name one item), or None."""
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
