"""load_uploaded: validate first, keep only good uploads, name the user's own file in errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from recdemo.data import DataError, load_uploaded

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "example"


def files(tmp_path, inter: str, items: str, names=("my_ratings.csv", "my_items.csv")):
    src = tmp_path / "incoming"
    src.mkdir(exist_ok=True)
    (src / names[0]).write_text(inter, newline="")
    (src / names[1]).write_text(items, newline="")
    return src / names[0], src / names[1]


def test_good_upload_is_kept_and_reused(tmp_path):
    root = tmp_path / "uploads"
    ds = load_uploaded(EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", 5, root)
    assert ds.n_items == 20 and len(ds.users) == 10 and ds.name.startswith("upload-")
    (kept,) = os.listdir(root)
    assert Path(ds.source) == root / kept
    assert sorted(os.listdir(root / kept)) == ["interactions.csv", "items.csv"]
    again = load_uploaded(EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", 5, root)
    assert again.content_hash == ds.content_hash and os.listdir(root) == [kept]


def test_named_upload(tmp_path):
    root = tmp_path / "uploads"
    ds = load_uploaded(EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", 5, root, name="books")
    assert ds.name == "books" and (root / "books" / "items.csv").is_file()
    with pytest.raises(ValueError, match="already exists"):
        load_uploaded(EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", 5, root, name="books")
    with pytest.raises(ValueError, match="dataset name"):
        load_uploaded(EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", 5, root, name="../x")


def test_bad_upload_leaves_nothing_and_names_the_users_file(tmp_path):
    root = tmp_path / "uploads"
    inter, items = files(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,last week\n",
                         "item_id,title\na,A\nb,B\n")
    with pytest.raises(DataError) as e:
        load_uploaded(inter, items, 5, root)
    assert str(e.value).startswith("my_ratings.csv (interactions file), line 3, column 'timestamp'")
    assert os.listdir(root) == []


def test_unknown_item_in_upload(tmp_path):
    root = tmp_path / "uploads"
    inter, items = files(tmp_path, "user_id,item_id,timestamp\nu,a,1\nv,zz,2\n", "item_id,title\na,A\n")
    with pytest.raises(DataError) as e:
        load_uploaded(inter, items, 5, root)
    assert (e.value.line, e.value.column) == (3, "item_id") and "my_ratings.csv" in str(e.value)
    assert os.listdir(root) == []


def test_swapped_files_too_little_data_and_size_limit(tmp_path):
    root = tmp_path / "uploads"
    with pytest.raises(DataError, match="look swapped"):
        load_uploaded(EXAMPLE / "items.csv", EXAMPLE / "interactions.csv", 5, root)
    inter, items = files(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,2\n", "item_id,title\na,A\nb,B\n")
    with pytest.raises(DataError, match="too little data: 1 user"):
        load_uploaded(inter, items, 5, root)
    with pytest.raises(DataError) as e:
        load_uploaded(EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", 0.0001, root)
    assert "interactions.csv" in str(e.value) and "upload limit" in str(e.value)
    assert os.listdir(root) == []
