"""Catalog: title cleaning (HTML entities, CRLF, newlines), lookup by title and its variants."""
from __future__ import annotations

import pytest

from recdemo.data import Catalog, load_dataset
from recdemo.data.catalog import clean_title, decode_entities, natural_title, normalize_title, title_variants


@pytest.mark.parametrize("raw,clean", [
    ("Crabtree &amp; Evelyn Hand Therapy", "Crabtree & Evelyn Hand Therapy"),
    ("Say &quot;Cheese&quot; &#39;n&#x27; smile", "Say \"Cheese\" 'n' smile"),
    ("Double &amp;quot;escaped&amp;quot;", 'Double "escaped"'),
    ("XIU&amp;#8482 Brush", "XIU\u2122 Brush"),  # numeric reference without ';', double-escaped
    ("AT&T Q&A &notes &copy", "AT&T Q&A &notes &copy"),  # no ';': not an entity, left alone
    ("Cream \nVanilla\r\n  2 oz", "Cream Vanilla 2 oz"),
])
def test_clean_title(raw, clean):
    assert clean_title(raw) == clean


def test_decode_entities_leaves_unknown_names():
    assert decode_entities("&notanentity; &amp;") == "&notanentity; &"


def test_catalog_decodes_entities_from_a_crlf_file(tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "items.csv").write_bytes(
        b"item_id,title,categories\r\n"
        b"p1,Salt &amp; Pepper Scrub,Bath|Body\r\n"
        b"p2,\"Rose &quot;Deluxe&quot;\r\nGift Set\",Gift\r\n"
        b"p3,Plain Soap,Bath\r\n")
    (folder / "interactions.csv").write_bytes(
        b"user_id,item_id,timestamp\r\nu1,p1,1\r\nu1,p2,2\r\nu2,p3,3\r\n")
    cat = load_dataset(None, data_dir=str(folder)).catalog
    assert cat.titles == ["Salt & Pepper Scrub", 'Rose "Deluxe" Gift Set', "Plain Soap"]
    assert cat.attributes == [("Bath", "Body"), ("Gift",), ("Bath",)]  # no '\r' on the last field
    assert cat.find_title("salt & pepper scrub") == 0


def test_find_title_variants():
    cat = Catalog(ids=["1", "2", "3", "4", "5"],
                  titles=["Matrix, The (1999)", "Hamlet (1948)", "Hamlet (1996)",
                          "Seven (a.k.a. Se7en) (1995)", "Amélie (2001)"])
    assert cat.find_title("The Matrix") == 0
    assert cat.find_title("the matrix (1999)") == 0
    assert cat.find_title("MATRIX, THE (1999)") == 0
    assert cat.find_title("Hamlet") is None  # two items share the name: ambiguous
    assert cat.find_title("hamlet (1996)") == 2
    assert cat.find_title("Se7en") == 3 and cat.find_title("seven") == 3
    assert cat.find_title("amelie") == 4  # accents ignored
    assert cat.find_title("Matrix Reloaded") is None


def test_title_helpers():
    assert natural_title("Matrix, The (1999)") == "The Matrix (1999)"
    assert natural_title("Homme, L' (2000)") == "L'Homme (2000)"
    assert natural_title("Toy Story (1995)") == "Toy Story (1995)"
    assert "The Matrix" in title_variants("Matrix, The (1999)")
    assert title_variants("Plain Title") == []
    assert normalize_title("  Amélie: Le Fabuleux!  ") == "amelie le fabuleux"


def test_describe_and_item():
    cat = Catalog(ids=["x"], titles=["Toy Box (1995)"], attributes=[("Animation", "Comedy")],
                  attribute_name="genres")
    assert cat.describe(0) == "Toy Box (1995) (Animation, Comedy)"
    assert cat.describe(0, with_attributes=False) == "Toy Box (1995)"
    assert cat.item(0) == {"index": 0, "id": "x", "title": "Toy Box (1995)", "attributes": ["Animation", "Comedy"]}
    assert cat.index_of("x") == 0
    with pytest.raises(KeyError):
        cat.index_of("y")
