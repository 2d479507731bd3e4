"""save_upload: validate first, keep only good uploads, name the user's own file in errors; numbers that do
not fit and fields over the limit are refused with file, line and column."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from recdemo.app.uploads import check_name, save_upload
from recdemo.config import LimitsConfig
from recdemo.errors import DataError

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "example"


def files(tmp_path, inter: str, items: str, names=("my_ratings.csv", "my_items.csv")):
    src = tmp_path / "incoming"
    src.mkdir(exist_ok=True)
    (src / names[0]).write_text(inter, newline="")
    (src / names[1]).write_text(items, newline="")
    return src / names[0], src / names[1]


def test_good_upload_is_kept_under_its_name(tmp_path):
    root = tmp_path / "uploads"
    folder, summary = save_upload(root, EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", "books", 5)
    assert Path(folder) == root / "books"
    assert sorted(os.listdir(folder)) == ["interactions.csv", "items.csv"]
    assert summary["users"] == 10 and summary["items"] == 20
    with pytest.raises(FileExistsError):  # the context refuses taken names first; never overwrite
        save_upload(root, EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", "books", 5)


def test_bad_name_is_refused():
    assert check_name(" books ", "Dataset") == "books"
    for bad in ("../x", "", ".hidden", "a" * 65, "a/b"):
        with pytest.raises(ValueError, match="Dataset name"):
            check_name(bad, "Dataset")


def test_bad_upload_leaves_nothing_and_names_the_users_file(tmp_path):
    root = tmp_path / "uploads"
    inter, items = files(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,last week\n",
                         "item_id,title\na,A\nb,B\n")
    with pytest.raises(DataError) as e:
        save_upload(root, inter, items, "bad", 5)
    assert str(e.value).startswith("my_ratings.csv (interactions file), line 3, column 'timestamp'")
    assert os.listdir(root) == []


def test_unknown_item_in_upload(tmp_path):
    root = tmp_path / "uploads"
    inter, items = files(tmp_path, "user_id,item_id,timestamp\nu,a,1\nv,zz,2\n", "item_id,title\na,A\n")
    with pytest.raises(DataError) as e:
        save_upload(root, inter, items, "x", 5)
    assert (e.value.line, e.value.column) == (3, "item_id") and "my_ratings.csv" in str(e.value)
    assert os.listdir(root) == []


def test_swapped_files_too_little_data_and_size_limit(tmp_path):
    root = tmp_path / "uploads"
    with pytest.raises(DataError, match="look swapped") as e:
        save_upload(root, EXAMPLE / "items.csv", EXAMPLE / "interactions.csv", "x", 5)
    assert e.value.file == "items.csv (interactions file)"
    inter, items = files(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,2\n", "item_id,title\na,A\nb,B\n")
    with pytest.raises(DataError, match="too little data: 1 user"):
        save_upload(root, inter, items, "x", 5)
    with pytest.raises(DataError) as e:
        save_upload(root, EXAMPLE / "interactions.csv", EXAMPLE / "items.csv", "x", 0.0001)
    assert "interactions.csv" in str(e.value) and "limited to" in str(e.value)
    with pytest.raises(ValueError, match="Please upload items.csv"):
        save_upload(root, EXAMPLE / "interactions.csv", None, "x", 5)
    with pytest.raises(DataError, match="not received"):
        save_upload(root, EXAMPLE / "interactions.csv", tmp_path / "gone.csv", "x", 5)
    assert not root.exists() or os.listdir(root) == []


ITEMS = "item_id,title\nb01,Lipstick\nb02,Mascara\nb03,Blush\n"


def small_files(tmp_path, interactions: str, items: str = ITEMS):
    (tmp_path / "in").mkdir(exist_ok=True)
    inter, it = tmp_path / "in" / "interactions.csv", tmp_path / "in" / "items.csv"
    inter.write_text(interactions)
    it.write_text(items)
    return str(inter), str(it)


def upload(tmp_path, interactions: str, items: str = ITEMS):
    limits = LimitsConfig()
    return save_upload(tmp_path / "uploads", *small_files(tmp_path, interactions, items), "mine",
                       limits.max_upload_mb, limits.max_field_chars)


def test_a_timestamp_beyond_int64_is_refused_with_its_place(tmp_path):
    with pytest.raises(DataError) as e:
        upload(tmp_path, "user_id,item_id,timestamp\nana,b01,1\nana,b02,2\nana,b03,99999999999999999999\n"
                         "bob,b01,1\nbob,b02,2\n")
    assert (e.value.line, e.value.column) == (4, "timestamp") and "interactions.csv" in str(e.value)
    assert not (tmp_path / "uploads" / "mine").exists()


def test_a_field_over_the_limit_is_refused_with_its_place(tmp_path):
    title = "x" * 100_000
    with pytest.raises(DataError) as e:
        upload(tmp_path, "user_id,item_id,timestamp\nana,b01,1\nana,b02,2\nbob,b01,1\nbob,b03,2\n",
               ITEMS + f"b04,{title}\n")
    assert (e.value.line, e.value.column) == (5, "title") and "items.csv" in str(e.value)
    assert f"{LimitsConfig().max_field_chars:,} characters" in str(e.value)
    assert not (tmp_path / "uploads" / "mine").exists()


def test_a_good_upload_still_loads(tmp_path):
    folder, summary = upload(tmp_path, "user_id,item_id,timestamp\nana,b01,1\nana,b02,2\nana,b03,3\n"
                                       "bob,b01,1\nbob,b03,2\nbob,b02,3\n")
    assert summary["users"] == 2 and summary["items"] == 3
