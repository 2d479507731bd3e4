"""Checks that every claim of an explanation sentence holds in the data.

A sentence about recommended item r, for a user with history H, whose evidence cites history items E:
- ``title``: each title it names, quoted or as a run of Capitalised words, is r's or one in H, in
  full or shortened (no year, article moved, the part before a colon), with the SAME leading article
  ("The Perfect Murder" is not "A Perfect Murder");
- ``category``: each genre/category word (the catalog's attribute words, their word forms and a few
  synonyms: "scary" ~ Horror) belongs to r or to a history item the sentence cites (E, or a
  history title it names);
  In a catalog without categories (products), the kind of product it names plays that part: each
  word of the catalog's title vocabulary ("eyeliner", "shampoo") belongs to r's title or a cited
  one, or is an umbrella word one of them backs ("makeup" ~ a "Face Powder");
- ``number``: each number is one the evidence holds (a co-occurrence count, a year or decade of a
  title it cites), and a count said of a title ("12 fans of "Up"") is that title's count;
- ``unbacked``: every other content word is one the data backs: a word of r's title, a cited title or
  a history title it names (the category, kind and number checks judge theirs; stock words pass). A
  claim nothing in the data can check fails: "a superhero action movie" (Superhero is no genre), "a
  documentary about the rise of artificial intelligence". Capitalised words are the title check's. In
  the phrase saying what r is ('"r" is a ...'), a word only another title backs fails too: '"Panic
  Room" is a Harry Potter thriller' (a cited title backs the sentence's other claims, not what r is);
- ``cut_off``: the sentence ends with . ! or ?, its quotes are closed, it does not end on a
  connector word, and no word is missing after an article ("a documentary about the of Anne Frank");
- ``empty``: what the model wrote (``written``: the part after the primed start) says something:
  a category word, a number, or content words beyond stock phrases ("shares similarities with
  both films", "a classic example of a film that has a timeless appeal").
``failures(sentence)`` returns the failed checks in ``CHECKS`` order; ``problems`` says what failed.
"""
from __future__ import annotations

import re

from recdemo.data.catalog import natural_title, normalize_title, title_variants
from recdemo.llm.profile import STOPWORDS, YEAR, catalog_key, stem, words

CHECKS = ("title", "category", "number", "unbacked", "cut_off", "empty")
ARTICLES = {"the", "a", "an"}
CONNECTORS = {"of", "the", "a", "an", "de", "la", "le", "&"}  # inside a title-like span ("Lord of the Rings")
# words a sentence (``cut_off``) or a title cut to its first words (``short_title``) may not end on
DANGLING = CONNECTORS | {"and", "or", "in", "to", "on", "for", "from", "with", "at", "that", "is", "are", "was",
                         "which", "who", "its", "their", "by", "as"}
# an article followed by a word that cannot start its noun phrase: a word went missing ("about the of")
MISSING_WORD = re.compile(r"\b(?:a|an|the)\s+(?:of|and|or|to|the|a|an|with|in|for|by|is|are|was|it|at|on)\b", re.I)
# Capitalised words that start or fill a span without naming anything ("Fans of", "Like", "Both").
HARMLESS = {"i", "they", "this", "it", "its", "like", "both", "but", "and", "as", "if", "because", "since",
            "while", "with", "you", "your", "user", "users", "fans", "fan", "if", "so", "also", "just", "in",
            "when", "who", "what", "here", "there", "these", "those", "then", "for", "from", "many", "all"}
# Category synonyms a sentence may use for an attribute word (compared after ``stem``). Words with an
# everyday sense ("love", "family", "kids") are left out: "you will love it" claims no genre.
SYNONYMS = {"scary": "horror", "frightening": "horror", "suspenseful": "thriller", "suspense": "thriller",
            "romantic": "romance", "funny": "comedy", "humorous": "comedy", "hilarious": "comedy",
            "cartoon": "animation", "animated": "animation", "science": "scifi", "scifi": "scifi",
            "detective": "mystery", "noir": "noir", "musicals": "musical", "westerns": "western"}
NOT_CATEGORY = {"fantastic", "animal", "animals", "no", "listed"}  # stems that collide with a genre's
# Words of stock phrases: a sentence made only of these (and titles) says nothing.
VAGUE = set("""similar similarity similarities share shares sharing shared common much lot lots many things thing
classic example timeless appeal great good perfect best must watch watched see seen buy bought enjoy enjoyed enjoys
love loved loves also both too well very really truly just one ones way kind sort fit fits fitting make makes made
recommend recommended recommendation choice pick option favorite favourite fan fans people person everyone
someone anyone will would can could should may might has have had having be been being is are was were do does did
something anything everything theme themes aspects aspect elements element qualities quality feel feeling vibe
same other another others similarly likewise alike related relation connection connected genre genres story
stories tone tones unique distinct specific blend blends combines combine combination approach narrative
popular range variety various sold sell sells selling brand brands high-end end limited edition exclusive
available customers customer worlds world offer offers offering mix type types features feature line lines
products product item items film films""".split())
# Words that carry no claim of their own, beside STOPWORDS, VAGUE and HARMLESS: function words, and the
# templates' plain words ("close in content to", "whose movies look like yours"). ``unbacked`` skips them.
PLAIN = set("""about above across after against along among around before behind below beneath beside besides
between beyond during except inside into near off onto out outside over past per since than through throughout
toward towards under until upon within without not nor yet only own such more most less least some any each
every either neither few several much him her his hers them our ours we us me my mine one whose where how why
whom whether though although unless even still quite rather already always never ever often now here there
close content look looks yours""".split())
STOCK = STOPWORDS | VAGUE | HARMLESS | DANGLING | PLAIN  # no claim of their own
# Umbrella words a product sentence may use for a kind its titles only imply ("makeup" for a "Face
# Powder"): umbrella -> title words (stems compared) that back it.
UMBRELLAS = {
    "makeup": "makeup cosmetic cosmetics powder eyeshadow shadow eyeliner liner mascara foundation concealer primer "
              "lipstick lip lipcolor lipcolour gloss blush bronzer palette brush brushes sponge blender lash lashes "
              "eyelashes eyebrow brow highlighter",
    "cosmetic": "makeup cosmetics powder eyeshadow eyeliner mascara foundation concealer primer lipstick lip palette",
    "hair": "hair shampoo conditioner curl curls curly dryer straightener flat iron curling styling comb scalp "
            "keratin wig extensions",
    "skin": "skin face facial moisturizer cream serum lotion cleanser mask sunscreen spf toner body",
    "skincare": "skin face facial moisturizer cream serum lotion cleanser mask sunscreen spf toner",
    "nail": "nail nails polish lacquer manicure cuticle",
    "eye": "eye eyes eyeshadow eyeliner mascara lash lashes eyebrow brow",
    "lip": "lip lips lipstick lipcolor lipcolour gloss balm",
    "face": "face facial foundation concealer powder primer blush bronzer",
    "fragrance": "fragrance perfume cologne parfum toilette mist spray scent",
}
# Words that end product names without naming a kind (shades, sizes, parts).
NOT_KIND = set("""gram grams fair light dark medium large long regular mini handle art deep clear full natural
red pink green blue brown blond blonde gold silver purple orange ivory beige plus pro premium""".split())
KIND_MIN_TITLES = 5  # a word ending at least this many short titles names a kind of product
SENTENCE_END = re.compile(r"""[.!?]["'”’)]*$""")
NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)(s\b|'s\b)?")
# "12 users bought it too", "12 users watched both": a count said of no title.
BARE_COUNT = re.compile(r"(?<![\w.])(\d+)\s+(?:users?|fans|viewers|buyers|people|customers)\s+(?:also\s+)?"
                        r"(?:bought|watched|liked|had|enjoyed)\s+(?:it|both|them)\b")
# '"Up" is an animated comedy, and ...': the title and the phrase saying what it is.
IS_A = re.compile(r'[\"“]([^\"”]+)[\"”]\s+(?:is|was)\s+(?:a|an|the)\s+([^,.;:"“]+?)(?=\s+(?:and|that|which|with|'
                  r'made|from|for|like|by|in|to)\b|[,.;:]|$)')
# "12 fans of "Up"", "12 users who watched "Up"", "12 buyers of "Up"": a count said of one title.
COUNT_OF = re.compile(r"(?<![\w.])(\d+)\s+(?:\w+\s+){0,1}(?:users?|fans|viewers|buyers|people|customers)\s+"
                      r"(?:of|who\s+(?:also\s+)?\w+)\s+[\"“]([^\"”]+)[\"”]")


def category_terms(attributes) -> set[str]:
    """Stems of the content words of attribute names ("Sci-Fi" -> sci, fi, scifi; "Film-Noir" -> noir)."""
    out = set()
    for a in attributes:
        if str(a).startswith("("):  # "(no genres listed)"
            continue
        for w in words(a):
            if w not in STOPWORDS and len(w) > 1:
                out.add(stem(w))
    return out


def word_category(word: str, vocab: set[str]) -> str | None:
    """The catalog category term ``word`` claims, if any."""
    w = word.lower()
    if w in STOPWORDS or w in NOT_CATEGORY:
        return None
    t = stem(SYNONYMS.get(w, w))
    return t if t in vocab else None


def is_category_word(text: str, catalog) -> bool:
    """Is a keyword only genre/category names ("Sci-Fi", "comedies", "action, drama")?"""
    vocab = _vocab(catalog)
    ws = [w for w in words(text) if w not in STOPWORDS]
    return bool(ws) and all(word_category(w, vocab) for w in ws)


_VOCABS: dict[tuple, set[str]] = {}


def _vocab(catalog) -> set[str]:
    key = catalog_key(catalog)
    if key not in _VOCABS:
        _VOCABS[key] = category_terms({a for attrs in catalog.attributes for a in attrs})
    return _VOCABS[key]


_KINDS: dict[tuple, set[str]] = {}


def _kind_vocab(catalog) -> set[str]:
    """Stems of the words that end at least ``KIND_MIN_TITLES`` short titles: a product name ends on
    its kind ("... Detangling Comb", "... Repair Shampoo"), so these are the catalog's words for kinds
    of products; stock words left out."""
    key = catalog_key(catalog)
    if key not in _KINDS:
        seen: dict[str, int] = {}
        for t in catalog.titles:
            last = re.findall(r"[A-Za-z]+", short_title(t))[-1:]
            if last and len(last[0]) >= 3:
                seen[stem(last[0])] = seen.get(stem(last[0]), 0) + 1
        skip = {stem(w) for w in STOPWORDS | VAGUE | HARMLESS | DANGLING}
        _KINDS[key] = {w for w, n in seen.items() if n >= KIND_MIN_TITLES and w not in skip}
    return _KINDS[key]


def product_kind(catalog, item: int) -> str | None:
    """The kind of product a title names, for catalogs without categories: its last kind word (see
    ``_kind_vocab``) before the first comma, dash or bracket ("... Caffeine Hair Growth Shampoo, 8 oz"
    -> "shampoo"); None when it names none (or the catalog has categories)."""
    if _vocab(catalog):
        return None
    head = re.split(r"\s*(?:,|\s-\s|\(|\[|:)\s*", natural_title(catalog.titles[int(item)]), maxsplit=1)[0]
    kinds = _kind_vocab(catalog)
    found = [w for w in re.findall(r"[A-Za-z]+", head) if len(w) >= 3 and stem(w) in kinds
             and w.lower() not in NOT_KIND]
    return found[-1].lower() if found else None


def title_stems(title: str) -> set[str]:
    """Stems of a title's alphabetic words of 3+ letters (parts of hyphenated words too)."""
    return {stem(w) for w in words(YEAR.sub("", title)) if len(w) >= 3 and w.isalpha()}


def title_forms(title: str) -> set[str]:
    """Normalised ways a sentence may name ``title``: in full, without year or alternative titles,
    article in front, and the part before a colon or dash ("Wallace & Gromit")."""
    forms = {normalize_title(short_title(title))}  # as explanations write it (explain.py primes with it)
    for t in {title, natural_title(title), *title_variants(title)}:
        bare = YEAR.sub("", t).strip()
        for v in (t, bare, re.sub(r"\s*\([^()]*\)", "", bare).strip()):
            forms.add(normalize_title(v))
            head = re.split(r"\s*(?::|\s-\s|,)\s*", v, maxsplit=1)[0]
            if len(head.split()) >= 2 or len(v.split()) > 4:
                forms.add(normalize_title(head))
    return {f for f in forms if f}


def short_title(title: str, max_words: int = 8) -> str:
    """"Toy Story (1995)" -> "Toy Story"; "Matrix, The (1999)" -> "The Matrix"; "Men in Black (a.k.a. MIB)"
    -> "Men in Black"; a product name is cut at its first comma/dash when long or followed by a size
    ("Herstyler Conditioner,6.4 Ounce (Pack of 2)" -> "Herstyler Conditioner"), then to ``max_words``;
    a title of up to two words more stays whole ("Pirates of the Caribbean: The Curse of the Black Pearl"), a
    longer one is cut to ``max_words`` without a dangling last word (not "... Colloidal Oatmeal for": "...
    Colloidal Oatmeal"), nor ending on a dash that stood before a bracket;
    a double quote in it becomes a double prime ('Iron 1"' -> 'Iron 1″')."""
    text = re.sub(r"\s*\(\d{4}\)\s*$", "", natural_title(title)).strip() or title
    long = len(text.split()) > max_words
    bare = re.sub(r"\s*\([^()]*\)", "", text).strip()
    text = bare if len(bare) >= 2 else text
    parts = re.split(r"\s*(?:,|\s-\s|\[|\|)\s*", text, maxsplit=1)
    if len(parts) == 2 and len(parts[0].split()) >= 2 and (long or re.match(r"\d", parts[1])):
        text = parts[0]
    kept = text.split()
    if len(kept) > max_words + 2:  # cutting off one or two words would leave a stub of a title
        kept = kept[:max_words]
        while len(kept) > 2 and kept[-1].lower() in DANGLING:
            kept.pop()
    while len(kept) > 1 and kept[-1] in ("-", "+", "/", "&", "|"):  # "Blotting Paper - (200 Sheets)"
        kept.pop()
    # a quote inside a title (inches: 'Iron 1"', '"Set of 2"') would end the quoted title early
    return " ".join(kept).replace('"', "″")


class ClaimChecker:
    """The checks of the module doc for one (history, item, evidence)."""

    def __init__(self, titles, item_attributes=(), cited_attributes=(), vocab=(), numbers=(),
                 titled_attributes=None, extra_words=(), counts=None, kind_vocab=(), kind_titles=(),
                 item_title: str | None = None, backing_titles=()):
        self.forms = {}  # normalised form -> the title it names
        for t in titles:
            for f in title_forms(t):
                self.forms.setdefault(f, t)
        self.padded = [f" {f} " for f in self.forms]
        self.vocab = set(vocab)
        self.allowed_categories = category_terms(list(item_attributes) + list(cited_attributes))
        self.titled_attributes = titled_attributes or {}  # title -> its attributes (history items)
        self.numbers = {str(n) for n in numbers}
        self.extra = {normalize_title(w) for w in extra_words if normalize_title(w)}
        self.counts: dict[str, set[int]] = {}  # form -> the counts of the titles it names (short forms collide)
        for t, n in (counts or {}).items():  # the count of a title, under each form a sentence may use
            for f in {normalize_title(short_title(t))} | title_forms(t):
                self.counts.setdefault(f, set()).add(int(n))
        self.kind_vocab = set(kind_vocab)  # products: title-word stems that name a kind of product
        self.kind_allowed = set().union(*(title_stems(t) for t in kind_titles)) if kind_titles else set()
        self.item_title = item_title
        self.backing = set().union(*(title_stems(t) for t in backing_titles))  # the item's and cited titles' words
        # words of the other titles a sentence may name: they back no claim about what the item is
        self.borrowable = set().union(*(title_stems(t) for t in list(titles) + list(backing_titles)))
        self.borrowable -= title_stems(item_title) if item_title else set()

    @classmethod
    def for_item(cls, catalog, history, item: int, evidence=(), domain_words=("movie", "movies", "product",
                                                                               "products")) -> "ClaimChecker":
        history = [int(h) for h in history]
        cited = [int(e["history_index"]) for e in evidence]
        titles = [catalog.titles[h] for h in history] + [catalog.titles[int(item)]]
        numbers = set()
        for e in evidence:
            numbers.update({e.get("co_occurrence"), e.get("value") if e.get("kind") == "co-occurrence" else None})
        for i in cited + [int(item)]:
            year = YEAR.search(catalog.titles[i])
            if year:
                numbers.update({year.group(1), year.group(1)[:3] + "0", year.group(1)[2] + "0"})
        numbers.discard(None)
        counts = {e["title"] if "title" in e else catalog.titles[int(e["history_index"])]: e.get("co_occurrence")
                  for e in evidence if e.get("co_occurrence") is not None}
        vocab = _vocab(catalog)
        backing = [catalog.titles[i] for i in cited + [int(item)]]  # the cited titles and the item's
        return cls(titles, catalog.attributes[int(item)], [a for h in cited for a in catalog.attributes[h]],
                   vocab, numbers, {catalog.titles[h]: catalog.attributes[h] for h in history},
                   domain_words, counts, () if vocab else _kind_vocab(catalog),
                   () if vocab else backing, catalog.titles[int(item)], backing)

    # -- titles --
    def title_of(self, span: str, quoted: bool) -> str | None | bool:
        """The title ``span`` names; True when it names nothing (a category word, "Fans of"), None
        when it names something that is neither the item nor in the history."""
        if normalize_title(span) in self.forms:
            return self.forms[normalize_title(span)]
        ws = normalize_title(span).split()
        while ws and ws[0] in HARMLESS | (CONNECTORS - ARTICLES):
            ws = ws[1:]
        while ws and ws[-1] in HARMLESS | CONNECTORS:
            ws = ws[:-1]
        if not ws:
            return True
        key = " ".join(ws)
        if key in self.forms:
            return self.forms[key]
        if all(w in ARTICLES or w in self.extra or w in STOPWORDS or word_category(w, self.vocab) or w in HARMLESS
               for w in ws):
            return True  # "The Sci-Fi", "Comedy", "Movies"
        if not quoted:  # a shortened title inside running text ("Toy Story" of "Toy Story 2"), same article
            for padded in self.padded:  # the article is part of the key: "the perfect murder" is no match
                if f" {key} " in padded:
                    return self.forms[padded.strip()]
        return None

    def named_titles(self, sentence: str) -> tuple[list[str], list[str]]:
        """(titles named that are allowed, spans naming something else)."""
        good, bad = [], []
        for a, b in re.findall(r'"([^"]+)"|“([^”]+)”', sentence):
            found = self.title_of(a or b, quoted=True)
            (bad.append(a or b) if found is None else good.append(found) if isinstance(found, str) else None)
        rest = re.sub(r'"[^"]*"|“[^”]*”', " | ", sentence)
        for span, at_start in capitalised_spans(rest):
            if at_start and len(span.split()) == 1:
                continue  # an ordinary sentence start ("They", "Since")
            found = self.title_of(span, quoted=False)
            (bad.append(span) if found is None else good.append(found) if isinstance(found, str) else None)
        return good, bad

    # -- the checks --
    def problems(self, sentence: str, written: str | None = None) -> dict[str, list[str]]:
        """{check: what failed it} for the failed checks only; ``written`` is the model's part
        (default: the whole sentence)."""
        sentence = re.sub(r"\s+", " ", sentence or "").strip()
        written = sentence if written is None else re.sub(r"\s+", " ", written).strip()
        out: dict[str, list[str]] = {}
        good, bad = self.named_titles(sentence)
        if bad:
            out["title"] = bad
        plain = strip_titles(sentence)
        allowed = self.allowed_categories | category_terms(a for t in good for a in self.titled_attributes.get(t, ()))
        wrong = [w for w in re.findall(r"[A-Za-z][\w-]*", plain)
                 for t in [category_of(w, self.vocab)] if t - allowed]  # "comedy-drama" claims both
        wrong += self.wrong_kinds(plain, good)
        wrong += [w for w in self.wrong_item_kind(sentence) if w not in wrong]
        if wrong:
            out["category"] = wrong
        numbers = [m.group(1) for m in NUMBER.finditer(plain) if m.group(1).replace(",", "") not in self.numbers]
        numbers += [f'{n} of "{t}"' for n, t in COUNT_OF.findall(sentence)
                    if normalize_title(t) in self.counts and int(n) not in self.counts[normalize_title(t)]
                    and n not in numbers]
        if numbers:
            out["number"] = numbers
        loose = self.unbacked(written, good)
        loose += [w for w in self.borrowed(sentence) if w not in loose]
        if loose:
            out["unbacked"] = loose
        if cut_off(sentence):
            out["cut_off"] = [sentence[-20:]]
        if not self.says_something(written):
            out["empty"] = [written]
        return {c: out[c] for c in CHECKS if c in out}

    def corrected_counts(self, sentence: str, first_count: int | None = None) -> str:
        """``sentence`` with each count said of a title ("17 fans of "Taken"") replaced by that title's
        count in the evidence (when it has one), and a count said of no title ("12 users bought it
        too") that the evidence lacks by ``first_count``: the count of the evidence item the primed
        start names first."""
        def fix(m):
            found = self.counts.get(normalize_title(m.group(2)), set())
            if len(found) != 1 or int(m.group(1)) in found or not min(found):  # unknown, ambiguous, or true
                return m.group(0)
            return str(min(found)) + m.group(0)[len(m.group(1)):]

        def fix_bare(m):
            keep = not first_count or m.group(1) in self.numbers
            return m.group(0) if keep else str(first_count) + m.group(0)[len(m.group(1)):]
        return BARE_COUNT.sub(fix_bare, COUNT_OF.sub(fix, sentence))

    def unbacked(self, written: str, named=()) -> list[str]:
        """Words of ``written`` (titles removed) that nothing in the data backs (the module doc's
        ``unbacked``); ``named``: the history titles the sentence names."""
        backed = self.backing.union(*(title_stems(t) for t in named)) | self.kind_vocab
        return list(dict.fromkeys(w for w, stems in self._claim_words(strip_titles(written), names=False)
                                  if not stems & backed))

    def borrowed(self, sentence: str) -> list[str]:
        """Words of the phrase saying what the item is that only another title backs ('"Panic Room" is a
        Harry Potter thriller'); genre, kind and stock words are the other checks' (or no claim)."""
        said = " ".join(m.group(2) for m in what_it_is(sentence, self.item_title))
        return list(dict.fromkeys(w for w, stems in self._claim_words(said, names=True)
                                  if stems & self.borrowable and not stems & self.kind_vocab))

    def _claim_words(self, text: str, names: bool):
        """(word, its stems) of ``text`` that may carry a claim: not a stock or domain word, an umbrella or a
        category word (those are the other checks'). ``names``: keep capitalised words, for which only
        function words are stock ("a Story horror film" names something); else they are the title check's."""
        for w in re.findall(r"[A-Za-z][\w'-]*", text):
            w = re.sub(r"'s$", "", w)  # "children's" is the Children genre's word
            lw = w.lower()
            if not names and (w[0].isupper() or len(lw) < 3):
                continue
            stock = DANGLING if w[0].isupper() else STOCK
            if lw in stock or lw in self.extra or lw in UMBRELLAS or category_of(w, self.vocab):
                continue
            yield w, {stem(p) for p in words(lw)}

    def wrong_kinds(self, plain: str, named=()) -> list[str]:
        """Product-kind words (catalogs without categories) that neither the item's title, a cited
        title nor a history title the sentence names backs ("a hair product" for a makeup brush)."""
        if not self.kind_vocab:
            return []
        allowed = self.kind_allowed.union(*(title_stems(t) for t in named))
        return self._unbacked(re.findall(r"[A-Za-z][\w'-]*", plain), allowed)

    def wrong_item_kind(self, sentence: str) -> list[str]:
        """Kind words of the phrase saying what the item is ("X" is a lip gloss) that its own title
        does not back."""
        if not self.kind_vocab:  # products only: what a movie is, its genres say
            return []
        out = []
        for m in what_it_is(sentence, self.item_title):
            out += self._unbacked(re.findall(r"[A-Za-z][\w'-]*", m.group(2)), title_stems(self.item_title))
        return out

    def _unbacked(self, tokens, allowed: set[str]) -> list[str]:
        out = []
        for w in tokens:
            lw = w.lower()
            if lw in STOPWORDS | VAGUE | HARMLESS | DANGLING | self.extra or len(lw) < 3:
                continue
            stems = {stem(p) for p in words(lw)}
            if stems & allowed:
                continue
            if lw in UMBRELLAS and {stem(x) for x in UMBRELLAS[lw].split()} & allowed:
                continue
            if stems & self.kind_vocab:
                out.append(w)
        return out

    def failures(self, sentence: str, written: str | None = None) -> list[str]:
        return list(self.problems(sentence, written))

    def says_something(self, written: str) -> bool:
        plain = strip_titles(written)
        if NUMBER.search(plain):
            return True
        tokens = re.findall(r"[A-Za-z][\w'-]*", plain)
        if any(category_of(w, self.vocab) for w in tokens):
            return True
        if self.kind_vocab and any({stem(p) for p in words(w)} & self.kind_vocab for w in tokens
                                   if w.lower() not in STOPWORDS | VAGUE):
            return True  # a product kind ("is a lipstick"): the kind check has vouched for it
        content = [w for w in tokens if w.lower() not in STOPWORDS | VAGUE | HARMLESS | DANGLING | self.extra
                   and len(w) > 2 and not w[0].isupper()]
        return len(content) >= 2


def what_it_is(sentence: str, title: str | None):
    """The ``IS_A`` matches of ``sentence`` that say what the item ``title`` is ('"Up" is an animated comedy');
    group 2 is the phrase."""
    forms = title_forms(title) if title else set()
    return [m for m in IS_A.finditer(sentence) if normalize_title(m.group(1)) in forms]


def category_of(word: str, vocab: set[str]) -> set[str]:
    """The category terms a (possibly hyphenated) word claims: "sci-fi" -> {"scifi", ...}."""
    return {t for w in words(word) if (t := word_category(w, vocab))}


def strip_titles(sentence: str) -> str:
    """The sentence without quoted spans (titles hold genre words and numbers: "Horror Express", "2")."""
    return re.sub(r'"[^"]*"|“[^”]*”|"[^"]*$', " ", sentence)


def cut_off(sentence: str) -> bool:
    s = sentence.strip()
    if not s or not SENTENCE_END.search(s):
        return True
    if s.count('"') % 2 or s.count("“") != s.count("”") or s.count("(") != s.count(")"):
        return True
    if MISSING_WORD.search(re.sub(r'"[^"]*"|“[^”]*”', " TITLE ", s)):
        return True
    last = re.findall(r"[\w&'-]+", s)
    return bool(last) and last[-1].lower() in DANGLING


def capitalised_spans(text: str) -> list[tuple[str, bool]]:
    """Runs of Capitalised words (connectors like "of the" allowed inside), with whether the run
    starts a sentence."""
    tokens = re.findall(r"[A-Za-z0-9][\w'’:-]*|[.!?|,;()]", text)
    spans, run, start, at_start = [], [], False, True
    for tok in tokens + ["."]:
        if tok in ".!?|,;()":  # punctuation (and a removed quote, "|") ends a run
            if run:
                spans.append((run, start))
            run, at_start = [], tok in ".!?"
            continue
        if tok[0].isupper() or (run and tok[0].isdigit()):
            if not run:
                start = at_start
            run.append(tok)
        elif run and tok.lower() in CONNECTORS:
            run.append(tok)
        else:
            if run:
                spans.append((run, start))
            run = []
        at_start = False
    out = []
    for ws, start in spans:
        while ws and ws[-1].lower() in CONNECTORS:
            ws = ws[:-1]
        if ws:
            out.append((" ".join(ws).strip(":"), start))
    return out


class RationaleChecker(ClaimChecker):
    """The title check alone: ``problems(sentence)`` lists the spans naming something outside
    ``titles`` (for callers checking only the names in a shown sentence)."""

    def __init__(self, titles, attributes=(), domain_words=()):
        super().__init__(titles, attributes, (), category_terms(attributes), extra_words=domain_words)

    def problems(self, sentence: str, written: str | None = None) -> list[str]:  # type: ignore[override]
        return self.named_titles(sentence)[1]
