"""Reading one CSV-like table with validation: every failure is a DataError naming file, line, column."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError


def read_table(path: str | Path, required: list[str], *, numeric: dict[str, str] | None = None,
               optional: list[str] = (), sep: str = ",", encoding: str = "utf-8",
               names: list[str] | None = None, max_mb: float = 1024) -> pd.DataFrame:
    """Read ``path`` as strings, check columns, convert ``numeric`` columns ('int' or 'float').

    ``names`` is for header-less files (MovieLens .dat); line numbers then start at 1 for data,
    otherwise the header is line 1 and the first data row is line 2.
    """
    path = Path(path)
    fname = path.name
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    size = path.stat().st_size
    if size > max_mb * 1024 * 1024:
        raise DataError(f"file is {size / 2**20:.0f} MB, over the {max_mb:g} MB limit", file=fname)
    if size == 0:
        raise DataError("the file is empty", file=fname)
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"byte 0x{raw[e.start]:02x} at character {col} is not valid {encoding.upper()}"
                        " (save the file as UTF-8)", file=fname, line=line) from None
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise DataError("the file is empty", file=fname)
    first_line = 1 if names else 2
    try:
        if len(sep) > 1:  # MovieLens '::' - split by hand, the C parser takes single chars only
            rows = [r.split(sep) for r in text.splitlines() if r.strip()]
            width = len(names)
            for i, r in enumerate(rows):
                if len(r) != width:
                    raise DataError(f"expected {width} fields separated by '{sep}', found {len(r)}",
                                    file=fname, line=i + 1)
            df = pd.DataFrame(rows, columns=names)
        else:
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                             header=None if names else "infer", names=names, skipinitialspace=True)
    except pd.errors.ParserError as e:
        raise DataError(f"cannot parse: {_parser_reason(e)}", file=fname,
                        line=_parser_line(e)) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; found {list(df.columns)}; expected "
                        f"{required + [f'[{o}]' for o in optional]}", file=fname, line=1)
    if len(df) == 0:
        raise DataError("the file has a header but no rows", file=fname)
    for col, kind in (numeric or {}).items():
        if col not in df.columns:
            continue
        values = df[col].str.strip()
        conv = pd.to_numeric(values, errors="coerce")
        bad = conv.isna().to_numpy().copy()
        if kind == "int" and not bad.all():
            bad |= ~np.isclose(conv.fillna(0).to_numpy() % 1, 0)
        if bad.any():
            i = int(np.argmax(bad))
            what = "an integer" if kind == "int" else "a number"
            raise DataError(f"expected {what}, got {df[col].iloc[i]!r}", file=fname,
                            line=i + first_line, column=col)
        df[col] = conv.astype("int64" if kind == "int" else "float64")
    df.attrs["first_line"] = first_line
    df.attrs["file"] = fname
    return df


def line_of(df: pd.DataFrame, row: int) -> int:
    """File line of the DataFrame's ``row``-th row (0-based position)."""
    return row + df.attrs.get("first_line", 2)


def _parser_line(e: Exception) -> int | None:
    import re
    m = re.search(r"line (\d+)", str(e))
    return int(m.group(1)) if m else None


def _parser_reason(e: Exception) -> str:
    msg = str(e).strip().splitlines()[-1]
    return msg.replace("Error tokenizing data. C error: ", "")


def file_size_ok(path: str | Path, max_mb: float) -> bool:
    return os.path.getsize(path) <= max_mb * 1024 * 1024
