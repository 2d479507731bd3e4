"""app/uploads: the upload path refuses numbers that do not fit and fields over the limit, naming
file, line and column, and leaves nothing behind."""
from __future__ import annotations

import pytest

from recdemo.app.uploads import save_upload
from recdemo.config import LimitsConfig
from recdemo.errors import DataError

ITEMS = "item_id,title\nb01,Lipstick\nb02,Mascara\nb03,Blush\n"


def files(tmp_path, interactions: str, items: str = ITEMS):
    (tmp_path / "in").mkdir(exist_ok=True)
    inter, it = tmp_path / "in" / "interactions.csv", tmp_path / "in" / "items.csv"
    inter.write_text(interactions)
    it.write_text(items)
    return str(inter), str(it)


def upload(tmp_path, interactions: str, items: str = ITEMS):
    limits = LimitsConfig()
    return save_upload(tmp_path / "uploads", *files(tmp_path, interactions, items), "mine",
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
    folder, summary = upload(tmp_path, "user_id,item_id,timestamp\nana,b01,1\nana,b02,2\nbob,b01,1\nbob,b03,2\n")
    assert summary["users"] == 2 and summary["items"] == 3
