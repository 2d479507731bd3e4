"""read_table: every bad file is a DataError naming file, line and column; good files parse exactly."""
from __future__ import annotations

import pytest

from recdemo.data import tables
from recdemo.errors import DataError
from recdemo.data.tables import line_of, read_table

INTER = ["user_id", "item_id", "timestamp"]
NUM = {"timestamp": "number", "rating": "float"}


def write(tmp_path, text, name="interactions.csv"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8", newline="")
    return p


def read(path, **kw):
    kw.setdefault("numeric", NUM)
    kw.setdefault("optional", ["rating"])
    return read_table(path, kw.pop("required", INTER), **kw)


def error(path, **kw) -> DataError:
    with pytest.raises(DataError) as e:
        read(path, **kw)
    return e.value


@pytest.fixture(params=["exact", "fast"])
def parser(request, monkeypatch):
    """Run a test with the csv-module parser and with pandas' fast path (used for big files)."""
    if request.param == "fast":
        monkeypatch.setattr(tables, "EXACT_PARSE_MB", 0)
    return request.param


def test_good_file_parses_with_types_and_lines(tmp_path, parser):
    p = write(tmp_path, "user_id,item_id,timestamp,rating\nu1,a,100,4.5\n\nu2, b ,200,3\n")
    df = read(p)
    assert df["item_id"].tolist() == ["a", "b"]  # spaces around values are dropped
    assert df["timestamp"].tolist() == [100, 200] and str(df["timestamp"].dtype) == "int64"
    assert df["rating"].tolist() == [4.5, 3.0]
    assert [line_of(df, i) for i in range(2)] == [2, 4]  # the blank line 3 still counts


def test_crlf_and_bom_and_quoted_newlines(tmp_path, parser):
    text = "\ufeffitem_id,title\r\n1,\"Two\r\nLines\"\r\n2,\"Comma, inside\"\r\n3,Plain\r\n"
    df = read_table(write(tmp_path, text, "items.csv"), ["item_id", "title"])
    assert list(df.columns[:2]) == ["item_id", "title"]  # BOM not glued to the first name
    assert df["title"].tolist() == ["Two\r\nLines", "Comma, inside", "Plain"]
    assert not any(t.endswith("\r") for t in df["title"])
    assert [line_of(df, i) for i in range(3)] == [2, 4, 5]  # record 2 starts after the 2-line title


def test_big_nanosecond_timestamps_stay_exact(tmp_path, parser):
    p = write(tmp_path, "user_id,item_id,timestamp\nu,a,1700000000123456789\nu,b,1700000000123456790\n")
    ts = read(p)["timestamp"].tolist()
    assert ts == [1700000000123456789, 1700000000123456790]


@pytest.mark.parametrize("kind", ["number", "int"])
@pytest.mark.parametrize("value", ["99999999999999999999", "9223372036854775808", "-9223372036854775809",
                                   "1e20", "18446744073709551616"])
def test_whole_numbers_beyond_int64_are_errors_not_wrapped(tmp_path, parser, kind, value):
    # A cast to int64 wrapped 99999999999999999999 to the smallest number: the item moved first.
    e = error(write(tmp_path, f"user_id,item_id,timestamp\nana,b01,1\nana,b02,2\nana,b03,{value}\n"),
              numeric={"timestamp": kind})
    assert (e.file, e.line, e.column) == ("interactions.csv", 4, "timestamp")
    assert "does not fit" in str(e) and value in str(e)


def test_int64_limits_themselves_are_exact(tmp_path, parser):
    text = "user_id,item_id,timestamp\nu,a,9223372036854775807\nu,b,-9223372036854775808\nu,c,1.0\n"
    assert read(write(tmp_path, text))["timestamp"].tolist() == [2**63 - 1, -2**63, 1]
    text = "user_id,item_id,timestamp\nu,a,9007199254740993\nu,b,2.0\nu,c,1e18\n"  # 2**53 + 1: float rounds it
    assert read(write(tmp_path, text))["timestamp"].tolist() == [2**53 + 1, 2, 10**18]


def test_fields_over_the_limit_are_errors(tmp_path, parser):
    long = "x" * 101
    p = write(tmp_path, f"item_id,title\na,Short\nb,\"{long}\"\n", "items.csv")
    with pytest.raises(DataError) as e:
        read_table(p, ["item_id", "title"], max_field_chars=100)
    assert (e.value.file, e.value.line, e.value.column) == ("items.csv", 3, "title")
    assert "101 characters" in str(e.value) and "100 characters" in str(e.value)
    assert read_table(p, ["item_id", "title"], max_field_chars=101)["title"].tolist() == ["Short", long]
    assert read_table(p, ["item_id", "title"])["title"].tolist() == ["Short", long]  # no limit by default


def test_missing_column(tmp_path, parser):
    e = error(write(tmp_path, "user_id,item_id,time\nu,a,1\n"))
    assert (e.file, e.line, e.column) == ("interactions.csv", 1, "timestamp")
    assert "interactions.csv, line 1, column 'timestamp'" in str(e) and "user_id,item_id,time" in str(e)


def test_wrong_header_is_reported_before_row_problems(tmp_path, parser):
    e = error(write(tmp_path, "user,item\nu,a,1\nu,b,2\n"))  # rows have 3 fields, header 2
    assert (e.line, e.column) == (1, "user_id") and "missing column" in str(e)


def test_non_numeric_timestamp(tmp_path, parser):
    e = error(write(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,\"multi\nline\"\nu,c,2\nu,d,yesterday\n"))
    assert str(e).startswith("interactions.csv, line 3, column 'timestamp'")  # the quoted 'multi\nline'
    e = error(write(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,\"2\"\nu,c,2\n\nu,d,yesterday\n"))
    assert (e.line, e.column) == (6, "timestamp") and "'yesterday'" in str(e)


def test_non_numeric_and_infinite_rating(tmp_path, parser):
    e = error(write(tmp_path, "user_id,item_id,timestamp,rating\nu,a,1,5\nu,b,2,great\n"))
    assert (e.file, e.line, e.column) == ("interactions.csv", 3, "rating")
    e = error(write(tmp_path, "user_id,item_id,timestamp,rating\nu,a,1,inf\n"))
    assert (e.line, e.column) == (2, "rating")


def test_int_column_rejects_fractions(tmp_path, parser):
    p = write(tmp_path, "userId,movieId,rating,timestamp\n1,2,3.5,100.5\n", "ratings.csv")
    with pytest.raises(DataError) as e:
        read_table(p, ["userId", "movieId", "rating", "timestamp"], numeric={"timestamp": "int"})
    assert (e.value.file, e.value.line, e.value.column) == ("ratings.csv", 2, "timestamp")
    assert "whole number" in str(e.value)


def test_empty_file(tmp_path, parser):
    e = error(write(tmp_path, ""))
    assert (e.file, e.line, e.column) == ("interactions.csv", 1, "user_id")
    assert "empty" in str(e) and "user_id,item_id,timestamp" in str(e)
    for blank in ("\n  \n", "\ufeff\r\n"):  # blank lines, a lone byte-order mark
        e = error(write(tmp_path, blank))
        assert "empty" in str(e) and (e.line, e.column) == (1, "user_id")


def test_header_only_file(tmp_path, parser):
    e = error(write(tmp_path, "user_id,item_id,timestamp\r\n"))
    assert (e.file, e.line, e.column) == ("interactions.csv", 2, "user_id")
    assert "no data rows" in str(e)


def test_non_utf8_bytes(tmp_path, parser):
    raw = "item_id,title\n1,Ok\n2,Caf".encode() + b"\xe9 au lait\n"  # latin-1 é
    with pytest.raises(DataError) as e:
        read_table(write(tmp_path, raw, "items.csv"), ["item_id", "title"])
    assert (e.value.file, e.value.line, e.value.column) == ("items.csv", 3, "title")
    assert "0xe9" in str(e.value) and "UTF-8" in str(e.value)


def test_file_over_the_size_limit(tmp_path, parser):
    p = write(tmp_path, "user_id,item_id,timestamp\n" + "u,a,1\n" * 400)  # 2,426 bytes
    e = error(p, max_mb=1000 / 2**20)  # a 1,000-byte limit
    assert "over the" in str(e) and "limit" in str(e)
    # the first 1,000 bytes end 2 bytes into line 164 ("u,"), where 'item_id' starts
    assert (e.file, e.line, e.column) == ("interactions.csv", 2 + (1000 - 26) // 6, "item_id")
    assert "interactions.csv, line 164, column 'item_id'" in str(e)


def test_ragged_rows(tmp_path, parser):
    e = error(write(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b,2,extra\n"))
    assert (e.file, e.line, e.column) == ("interactions.csv", 3, 4)
    assert "line 3, column 4" in str(e) and "extra field" in str(e)


def test_trailing_comma_on_every_row_is_not_silently_dropped(tmp_path, parser):
    e = error(write(tmp_path, "user_id,item_id,timestamp\nu,a,1,\nu,b,2,\n"))
    assert (e.line, e.column) == (2, 4) and "extra field" in str(e)


def test_short_row_names_the_missing_column(tmp_path):
    e = error(write(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b\n"))
    assert (e.file, e.line, e.column) == ("interactions.csv", 3, "timestamp")
    assert "missing value" in str(e)


def test_short_row_on_the_fast_path_is_still_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "EXACT_PARSE_MB", 0)
    e = error(write(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,b\n"))
    assert (e.line, e.column) == (3, "timestamp")


def test_bad_quotes_and_duplicate_header(tmp_path):
    e = error(write(tmp_path, "user_id,item_id,timestamp\nu,a,1\nu,\"b\"x,2\n"))
    assert (e.file, e.line) == ("interactions.csv", 3) and "quote" in str(e)
    e = error(write(tmp_path, "user_id,item_id,timestamp,item_id\nu,a,1,b\n"))
    assert (e.line, e.column) == (1, "item_id") and "twice" in str(e)


def test_headerless_double_colon_files(tmp_path):
    p = write(tmp_path, "1::10::5::978300760\n\n2::20::3::978300761\n", "ratings.dat")
    df = read_table(p, [], names=["user_id", "item_id", "rating", "timestamp"], sep="::",
                    encoding="latin-1", numeric={"timestamp": "int", "rating": "float"})
    assert df["item_id"].tolist() == ["10", "20"] and [line_of(df, i) for i in range(2)] == [1, 3]
    p = write(tmp_path, "1::10::5::978300760\n2::20::3\n", "ratings.dat")
    with pytest.raises(DataError) as e:
        read_table(p, [], names=["user_id", "item_id", "rating", "timestamp"], sep="::")
    assert (e.value.file, e.value.line, e.value.column) == ("ratings.dat", 2, "timestamp")


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read(tmp_path / "nope.csv")
