"""Reading one CSV-like table with validation: every failure is a DataError naming file, line, column.

Every table comes back as strings plus a hidden ``_line`` column: the file line where each row
starts (quoted titles may span lines, blank lines are skipped), so later checks (unknown item ids,
duplicates) can still point at the right line after rows are filtered or reordered.

Files up to ``EXACT_PARSE_MB`` are parsed with Python's ``csv`` module, which sees every row
(ragged rows, bad quoting); larger files (MovieLens 20M+) go through pandas' C parser for speed and
fall back to the exact scan only to locate an error.
"""
from __future__ import annotations

import csv
import io
import re
import warnings
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

from recdemo.errors import DataError

EXACT_PARSE_MB = 64
csv.field_size_limit(max(csv.field_size_limit(), 16 * 2**20))  # long descriptions are fine


def read_table(path: str | Path, required: list[str], *, numeric: dict[str, str] | None = None,
               optional: list[str] = (), sep: str = ",", encoding: str = "utf-8",
               names: list[str] | None = None, max_mb: float = 1024,
               max_field_chars: int | None = None) -> pd.DataFrame:
    """Read ``path`` as strings, check columns, convert ``numeric`` columns.

    ``numeric`` maps a column to 'int' (whole numbers), 'float' or 'number' (int64 when every value
    is whole, else float64); a whole number beyond int64 is an error. ``names`` is for header-less
    files (MovieLens .dat): data then starts at line 1, otherwise the header is line 1.
    ``max_field_chars`` (uploads): a longer value in any column is an error.
    """
    path = Path(path)
    fname = path.name
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    expected = list(names or required) + [f"[{o}]" for o in optional if not names]
    _check_size(path, fname, max_mb, sep, encoding, names)
    text = _decode(path.read_bytes(), encoding, fname, sep, names)
    if not text.strip():
        what = "data rows" if names else "a header line: " + ",".join(expected)
        raise DataError(f"the file is empty; it should start with {what}", file=fname, line=1,
                        column=(names or required or [None])[0])

    def check_header(header: list[str]) -> None:  # before any row is looked at
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"missing column {missing[0]!r}: the header is {','.join(header)!r}, "
                            f"expected {','.join(expected)}", file=fname, line=1, column=missing[0])

    if len(sep) > 1:
        header, df = _parse_split(text, sep, names, fname)
    elif len(text) <= EXACT_PARSE_MB * 2**20:
        header, df = _parse_exact(text, sep, names, fname, check_header)
    else:
        header, df = _parse_fast(text, sep, names, fname, numeric or {})
        if df is None:  # the C parser disliked something: the exact scan finds and names it
            header, df = _parse_exact(text, sep, names, fname, check_header)
    check_header(header)
    if len(df) == 0:
        raise DataError("the header is there but no data rows follow it", file=fname,
                        line=2 if not names else 1, column=header[0])
    if max_field_chars is not None:
        _check_lengths(df, header, max_field_chars, fname)
    for col, kind in (numeric or {}).items():
        if col in df.columns:
            df[col] = _to_number(df, col, kind, fname)
    df.attrs["file"] = fname
    return df


def line_of(df: pd.DataFrame, row: int) -> int:
    """File line where the DataFrame's ``row``-th row (0-based position) starts."""
    return int(df["_line"].iloc[row])


# -- checks before parsing ----------------------------------------------------------------------

def _check_size(path: Path, fname: str, max_mb: float, sep: str, encoding: str,
                names: list[str] | None) -> None:
    """Refuse a file over the limit, saying where in it the limit falls (line and field), so the
    user knows how much of it would fit."""
    size = path.stat().st_size
    limit = int(max_mb * 2**20)
    if size <= limit:
        return
    lines, head, tail = 1, b"", b""
    with path.open("rb") as f:  # read only up to the limit
        remaining = limit
        while remaining > 0:
            chunk = f.read(min(remaining, 2**22))
            if not chunk:
                break
            head = head or chunk
            lines += chunk.count(b"\n")
            cut = chunk.rfind(b"\n")
            tail = chunk[cut + 1:] if cut >= 0 else (tail + chunk)[-2**20:]
            remaining -= len(chunk)
    field = tail.decode(encoding, "replace").count(sep) + 1  # quotes ignored: a close guess is enough
    end = head.find(b"\n")
    header = names or [h.strip() for h in (head if end < 0 else head[:end]).decode(
        encoding, "replace").lstrip("\ufeff").split(sep)]
    column = header[field - 1] if field <= len(header) else field
    raise DataError(f"the file is {size / 2**20:.1f} MB, over the {max_mb:g} MB limit, which is reached "
                    "here; split the file or raise the limit", file=fname, line=lines, column=column)


def _decode(raw: bytes, encoding: str, fname: str, sep: str, names: list[str] | None) -> str:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw[: e.start].count(b"\n") + 1
        prefix = raw[start: e.start].decode(encoding, errors="replace")
        field = len(next(csv.reader([prefix], delimiter=sep[0]), [""])) if len(sep) == 1 else \
            len(prefix.split(sep))
        end = raw.find(b"\n")
        first_line = (raw if end < 0 else raw[:end]).decode(encoding, "replace")
        header = names or next(csv.reader([first_line], delimiter=sep[0]), [])
        column = header[field - 1].strip().lstrip("\ufeff") if 0 < field <= len(header) else field
        raise DataError(f"byte 0x{raw[e.start]:02x} (character {e.start - start + 1} of the line) is not "
                        f"valid {encoding.upper()}; save the file as UTF-8", file=fname, line=line,
                        column=column) from None
    return text.lstrip("\ufeff")


# -- parsers: each returns (header, DataFrame of str with a `_line` column) ---------------------

def _frame(header: list[str], rows: list[list[str]], lines: list[int]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    df["_line"] = np.asarray(lines, dtype=np.int64)
    return df


def _scan(text: str, sep: str, fname: str):
    """Yield (line where the record starts, fields) for every non-blank record, strictly parsed."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, skipinitialspace=True,
                        strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"cannot parse this row ({e}); check the quotes around values",
                            file=fname, line=start) from None
        if any(f.strip() for f in row):
            yield start, [f.strip() for f in row]
        start = reader.line_num + 1


def _check_header(header: list[str], fname: str) -> list[str]:
    header = [h.strip() for h in header]
    seen = set()
    for i, h in enumerate(header):
        if not h:
            raise DataError("empty column name in the header", file=fname, line=1, column=i + 1)
        if h in seen:
            raise DataError("this column name appears twice in the header", file=fname, line=1,
                            column=h)
        seen.add(h)
    return header


def _ragged(header: list[str], row: list[str], line: int, fname: str) -> DataError:
    n, width = len(row), len(header)
    if n < width:
        return DataError(f"missing value: the row has {n} field(s) but the header has {width} "
                         f"({','.join(header)})", file=fname, line=line, column=header[n])
    return DataError(f"unexpected extra field: the row has {n} fields but the header has {width} "
                     f"({','.join(header)}); values containing '{','}' must be in double quotes",
                     file=fname, line=line, column=width + 1)


def _parse_exact(text: str, sep: str, names: list[str] | None, fname: str, check_header=None):
    records = _scan(text, sep, fname)
    if names:
        header = list(names)
    else:
        first = next(records, None)
        header = _check_header(first[1] if first else [], fname)
        if check_header:
            check_header(header)
    width = len(header)
    rows, lines = [], []
    for line, row in records:
        if len(row) != width:
            raise _ragged(header, row, line, fname)
        rows.append(row)
        lines.append(line)
    return header, _frame(header, rows, lines)


def _parse_split(text: str, sep: str, names: list[str], fname: str):
    """MovieLens ``::`` files: no quoting, one record per line."""
    rows, lines = [], []
    width = len(names)
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = [f.strip() for f in line.split(sep)]
        if len(row) != width:
            raise _ragged(names, row, i, fname)
        rows.append(row)
        lines.append(i)
    return list(names), _frame(list(names), rows, lines)


def _parse_fast(text: str, sep: str, names: list[str] | None, fname: str, numeric: dict[str, str]):
    """pandas' C parser, converting 'int'/'float' columns in C. Returns (None, None) when it fails
    (a ragged row, a non-number, ...): the caller then rescans exactly to locate and name the error."""
    dtypes = defaultdict(lambda: str, {c: "int64" if k == "int" else "float64"
                                       for c, k in numeric.items() if k in ("int", "float")})
    try:
        with warnings.catch_warnings():  # "loss of data" is a warning in pandas: make it fail here
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=dtypes, keep_default_na=False,
                             na_values=[], index_col=False, header=None if names else 0, names=names,
                             skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, TypeError, OverflowError):
        return None, None
    header = _check_header(list(df.columns), fname) if not names else list(names)
    df.columns = header
    # Leading spaces are skipped by the parser; strip trailing ones only if the text has any
    # (a Python-level pass over millions of ids otherwise).
    if re.search(r"[ \t](?=" + re.escape(sep) + r"|\r?\n|\Z)", text):
        for col in header:
            if df[col].dtype == object or str(df[col].dtype).startswith(("str", "string")):
                df[col] = df[col].str.strip()
    first = 1 if names else 2
    physical = text.count("\n") + (0 if text.endswith("\n") else 1) - (first - 1)
    if physical == len(df):  # one record per line: the line is the position
        df["_line"] = np.arange(first, first + len(df), dtype=np.int64)
    else:  # quoted newlines or blank lines: take the exact starts from the csv module
        df["_line"] = np.fromiter((ln for ln, _ in _scan(text, sep, fname)), dtype=np.int64,
                                  count=len(df) + (0 if names else 1))[(0 if names else 1):]
    return header, df


def _check_lengths(df: pd.DataFrame, header: list[str], limit: int, fname: str) -> None:
    """A field longer than ``limit`` characters is refused (one 100,000-character title would
    otherwise be accepted, and every prompt it reaches would be cut from it)."""
    for col in header:
        if df[col].dtype.kind in "iuf":  # parsed as numbers by the fast path: short by construction
            continue
        lengths = df[col].str.len().to_numpy()
        if len(lengths) and lengths.max() > limit:
            i = int(np.argmax(lengths > limit))
            raise DataError(f"the value is {int(lengths[i]):,} characters long; fields are limited to "
                            f"{limit:,} characters", file=fname, line=line_of(df, i), column=col)


# -- numbers -------------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
FLOAT_EXACT = 2.0**53  # whole floats below this are exact integers


def _to_number(df: pd.DataFrame, col: str, kind: str, fname: str) -> pd.Series:
    values = df[col]
    if values.dtype.kind == "i":  # already parsed as int64 (fast path): exact and in range
        return values.astype("int64")
    conv = pd.to_numeric(values, errors="coerce").astype("float64")
    arr = conv.to_numpy()
    bad = ~np.isfinite(arr)
    whole = np.zeros_like(bad) if bad.all() else np.isclose(np.nan_to_num(arr) % 1, 0)
    if kind == "int":
        bad |= ~whole
    if bad.any():
        i = int(np.argmax(bad))
        what = {"int": "a whole number", "float": "a number", "number": "a number"}[kind]
        got = values.iloc[i]
        raise DataError(f"expected {what}, got {got!r}" if got else f"expected {what}, the value is empty",
                        file=fname, line=line_of(df, i), column=col)
    if kind == "int" or (kind == "number" and whole.all()):
        return _to_int64(df, col, arr, fname)
    return conv


def _to_int64(df: pd.DataFrame, col: str, arr: np.ndarray, fname: str) -> pd.Series:
    """Whole numbers as exact int64. A value beyond int64 is an error: a plain cast wraps it around
    (a timestamp of 99999999999999999999 became the smallest number and moved its item first)."""
    values = df[col]
    ints = pd.to_numeric(values, errors="coerce")
    if ints.dtype.kind == "i":  # pandas parsed every value exactly as int64
        return ints.astype("int64")
    out = np.zeros(len(arr), dtype=np.int64)
    exact = np.abs(arr) < FLOAT_EXACT
    out[exact] = arr[exact].astype(np.int64)
    for i in np.flatnonzero(~exact):  # large values: the float may be rounded, read the text exactly
        number = _exact_int(values.iloc[i])
        if number is None or not INT64_MIN <= number <= INT64_MAX:
            raise DataError(f"the number {values.iloc[i]} does not fit: whole numbers here must lie between "
                            f"{INT64_MIN} and {INT64_MAX}", file=fname, line=line_of(df, i), column=col)
        out[i] = number
    return pd.Series(out, index=values.index, name=col)


def _exact_int(text) -> int | None:
    try:
        number = Decimal(str(text).strip())
    except InvalidOperation:
        return None
    return int(number.to_integral_value()) if number.is_finite() else None
