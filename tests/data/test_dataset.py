"""Dataset building: cross-file validation, stable per-user order, the split, loading by name."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import real_data_root

from recdemo.data import DataError, load_dataset
from recdemo.data.dataset import resolve_folder

ITEMS = "item_id,title,categories\na,Apple,Fruit\nb,Banana,Fruit\nc,Carrot,Vegetable\nd,Date,Fruit\n"


def make(tmp_path, interactions: str, items: str = ITEMS, name: str = "d") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "interactions.csv").write_text(interactions, encoding="utf-8", newline="")
    (folder / "items.csv").write_text(items, encoding="utf-8", newline="")
    return folder


def load(folder: Path):
    return load_dataset(None, data_dir=str(folder))


def test_order_is_timestamp_then_file_order(tmp_path):
    ds = load(make(tmp_path, "user_id,item_id,timestamp\n"
                             "u1,c,200\nu1,a,100\nu1,d,200\nu1,b,100\nu2,a,5\n"))
    cat = ds.catalog
    assert [cat.ids[i] for i in ds.sequences[0]] == ["a", "b", "c", "d"]  # ties keep file order
    assert [cat.ids[i] for i in ds.sequences[1]] == ["a"]


def test_users_sort_numerically_and_distinct_strings_stay_distinct(tmp_path):
    ds = load(make(tmp_path, "user_id,item_id,timestamp\n10,a,1\n2,b,1\n007,c,1\n7,d,1\n"))
    assert ds.users == ["2", "007", "7", "10"]
    assert [len(s) for s in ds.sequences] == [1, 1, 1, 1]  # "7" and "007" are two users
    ds = load(make(tmp_path, "user_id,item_id,timestamp\nbob,a,1\nann,b,1\nbob,c,0\n", name="e"))
    assert ds.users == ["ann", "bob"] and [ds.catalog.ids[i] for i in ds.sequences[1]] == ["c", "a"]


def test_string_ids_need_not_be_numeric_but_timestamps_must_be(tmp_path):
    ds = load(make(tmp_path, "user_id,item_id,timestamp\nuser-x,a,1.5\nuser-x,b,1.25\n"))
    assert [ds.catalog.ids[i] for i in ds.sequences[0]] == ["b", "a"]  # fractional timestamps sort
    folder = make(tmp_path, "user_id,item_id,timestamp\nuser-x,a,2024-01-01\n", name="e")
    with pytest.raises(DataError) as e:
        load(folder)
    assert (e.value.file, e.value.line, e.value.column) == ("interactions.csv", 2, "timestamp")


def test_a_timestamp_beyond_int64_is_an_error_not_a_reordering(tmp_path):
    folder = make(tmp_path, "user_id,item_id,timestamp\nana,a,1\nana,b,2\nana,c,99999999999999999999\n")
    with pytest.raises(DataError) as e:
        load(folder)
    assert (e.value.file, e.value.line, e.value.column) == ("interactions.csv", 4, "timestamp")


def test_a_rating_beyond_float32_is_an_error(tmp_path):
    folder = make(tmp_path, "user_id,item_id,timestamp,rating\nana,a,1,4\nana,b,2,1e39\n")
    with pytest.raises(DataError) as e:
        load(folder)
    assert (e.value.file, e.value.line, e.value.column) == ("interactions.csv", 3, "rating")


def test_field_limit_reaches_the_reader(tmp_path):
    folder = make(tmp_path, "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\n",
                  items="item_id,title\na,Apple\nb," + "B" * 50 + "\n")
    assert load_dataset(None, data_dir=str(folder)).catalog.titles[1] == "B" * 50
    with pytest.raises(DataError) as e:
        load_dataset(None, data_dir=str(folder), max_field_chars=49)
    assert (e.value.file, e.value.line, e.value.column) == ("items.csv", 3, "title")


def test_unknown_item_reference(tmp_path):
    folder = make(tmp_path, "user_id,item_id,timestamp\nu1,a,1\nu1,zzz,2\n")
    with pytest.raises(DataError) as e:
        load(folder)
    assert (e.value.file, e.value.line, e.value.column) == ("interactions.csv", 3, "item_id")
    assert "'zzz' is not in items.csv" in str(e.value)


def test_duplicate_item_ids(tmp_path):
    folder = make(tmp_path, "user_id,item_id,timestamp\nu1,a,1\n",
                  items="item_id,title\na,Apple\nb,\"Banana,\nripe\"\na,Avocado\n")
    with pytest.raises(DataError) as e:
        load(folder)
    assert (e.value.file, e.value.line, e.value.column) == ("items.csv", 5, "item_id")
    assert "duplicate item id 'a'" in str(e.value) and "line 2" in str(e.value)


def test_empty_title_and_blank_ids(tmp_path):
    with pytest.raises(DataError) as e:
        load(make(tmp_path, "user_id,item_id,timestamp\nu1,a,1\n", items="item_id,title\na,Apple\nb,  \n"))
    assert (e.value.file, e.value.line, e.value.column) == ("items.csv", 3, "title")
    with pytest.raises(DataError) as e:
        load(make(tmp_path, "user_id,item_id,timestamp\nu1,a,1\n ,b,2\n", name="e"))
    assert (e.value.file, e.value.line, e.value.column) == ("interactions.csv", 3, "user_id")


def test_unused_items_are_dropped_and_split_is_leave_one_out(tmp_path):
    ds = load(make(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\nv,a,1\nv,b,2\n"))
    assert ds.catalog.ids == ["a", "b", "c"]  # d is never used
    assert [list(s) for s in ds.train_sequences()] == [[0], [0, 1]]  # v is too short to split
    (case,) = ds.eval_cases("test")
    assert (case.user, list(case.history), case.target) == (0, [0, 1], 2)
    (case,) = ds.eval_cases("valid")
    assert (list(case.history), case.target) == ([0], 1)
    with pytest.raises(ValueError):
        ds.eval_cases("train")


def test_statistics_count_repeats_and_the_split(tmp_path, capsys):
    from recdemo.cli.main import main

    folder = make(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,a,3\nu,c,4\nv,a,1\nv,b,2\n"
                            "w,b,1\nw,b,2\nw,b,3\n")
    s = load(folder).statistics()
    assert (s["users"], s["items"], s["interactions"]) == (3, 3, 9)
    assert s["repeats"] == 3 and s["repeat_share"] == pytest.approx(3 / 9)  # u's second a, w's b twice
    # u and w have three or more items: one valid and one test case each; v trains only
    assert (s["valid_cases"], s["test_cases"]) == (2, 2)
    assert (s["train_interactions"], s["train_targets"]) == (2 + 2 + 1, 1 + 1 + 0)
    assert main(["data", "info", "--data-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "repeat share 33.33%" in out and "valid 2 cases, test 2 cases" in out


def test_content_hash_follows_content_and_load_notices_edits(tmp_path):
    folder = make(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,2\n")
    first = load(folder)
    assert load(folder) is first  # memoised
    inter = folder / "interactions.csv"
    inter.write_text("user_id,item_id,timestamp\nu,b,1\nu,a,2\n")
    os.utime(inter, ns=(1, 1))  # a different mtime even on coarse clocks
    second = load(folder)
    assert second is not first and second.content_hash != first.content_hash


def test_resolve_folder_messages(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        resolve_folder("nope", None, str(tmp_path))
    with pytest.raises(DataError) as e:
        resolve_folder("movielens-small", None, str(tmp_path))
    assert "python -m recdemo data download movielens-small" in str(e.value)
    assert "RECDEMO_DATA_DIR" in str(e.value)
    with pytest.raises(DataError, match="is not a folder"):
        resolve_folder(None, str(tmp_path / "x"), None)
    (tmp_path / "x").mkdir()
    assert resolve_folder("ml-1m", str(tmp_path / "x"), None) == tmp_path / "x"  # --data-dir wins


@pytest.mark.integration
def test_real_movielens_small_matches_its_source_notes():
    import pandas as pd

    root = real_data_root("movielens-small")
    ds = load_dataset("movielens-small", root=root)
    assert (len(ds.users), ds.n_items, ds.n_interactions) == (610, 9724, 100836)
    assert ds.catalog.attribute_name == "genres" and ds.ratings is not None
    assert all(len(r) == len(s) for r, s in zip(ds.ratings, ds.sequences))
    # user "1" in time order (stable sort = file order for equal timestamps)
    df = pd.read_csv(Path(root) / "ml-latest-small" / "ratings.csv")
    u1 = df[df.userId == 1].sort_values("timestamp", kind="stable")
    assert ds.users[0] == "1"
    assert [ds.catalog.ids[i] for i in ds.sequences[0]] == u1.movieId.astype(str).tolist()
    assert ds.ratings[0].tolist() == u1.rating.tolist()


@pytest.mark.integration
def test_real_amazon_beauty_keeps_file_order_within_days():
    import csv

    root = real_data_root("amazon-beauty")
    ds = load_dataset("amazon-beauty", root=root)
    assert (len(ds.users), ds.n_items, ds.n_interactions) == (22332, 12086, 198215)
    assert min(len(s) for s in ds.sequences) == 5 and max(len(s) for s in ds.sequences) == 204
    # timestamps never decrease in file order, so the sequences must be exactly the file order
    with open(Path(root) / "amazon-beauty" / "interactions.csv", newline="") as f:
        first_user = [r[1] for r in csv.reader(f) if r[0] == ds.users[0]]
    assert [ds.catalog.ids[i] for i in ds.sequences[0]] == first_user
    assert not any("&amp;" in t or "&quot;" in t for t in ds.catalog.titles)  # entities decoded
