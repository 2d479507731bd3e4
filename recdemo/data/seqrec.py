"""The SeqRec Benchmark release (Amazon-2014-Beauty): pandas pickles in a zip -> our CSV layout.

The release ships ``user2item.pkl`` (UserID, ItemID list, Timestamp list per user) and
``item2title.pkl`` (ItemID, Title). Pickles can run code, so they are opened only after the zip's
sha256 matched the pinned value (download.py), and even then through ``RestrictedUnpickler``: it
can build only the few pandas/numpy objects a DataFrame of ints, lists and strings needs.
The conversion matches ../shared/data/amazon-beauty/SOURCE.md: items.csv ``item_id,title``
(titles unchanged, HTML entities included), interactions.csv ``user_id,item_id,timestamp`` in the
release's order (by user, then that user's sequence order).
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pandas as pd

from recdemo.errors import DataError

try:  # pandas' own compat unpickler also reads pickles written by pandas 1.x/2.x
    from pandas.compat.pickle_compat import Unpickler as _BaseUnpickler
except ImportError:  # pragma: no cover - a future pandas without it
    _BaseUnpickler = pickle.Unpickler

# What a pickled DataFrame of ints / object lists / strings references (pandas 2.x and 3.x,
# numpy 1.x and 2.x). Anything else (os.system, builtins.eval, ...) is refused.
_NP = ("numpy._core", "numpy.core")
ALLOWED = {
    ("builtins", "slice"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *{(f"{p}.multiarray", n) for p in _NP for n in ("_reconstruct", "scalar")},
    *{(f"{p}.numeric", "_frombuffer") for p in _NP},
    ("pandas", "DataFrame"), ("pandas", "Index"), ("pandas", "RangeIndex"), ("pandas", "StringDtype"),
    ("pandas.arrays", "StringArray"),
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.indexes.base", "Index"), ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.indexes.numeric", "Int64Index"),  # pandas 1.x
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.blocks", "new_block"),  # pandas <= 1.3
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    ("pandas.core.arrays.string_", "StringDtype"), ("pandas.core.arrays.string_", "StringArray"),
}

MEMBERS = ("user2item.pkl", "item2title.pkl")


class RestrictedUnpickler(_BaseUnpickler):
    """An unpickler that only builds the objects in ``ALLOWED``."""

    source = "pickle"

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise DataError(f"refusing to load {module}.{name}: the file holds more than a plain "
                            "DataFrame (not the expected release, or tampered with)", file=self.source)
        if module.startswith("numpy.core."):  # numpy 1.x names; numpy 2 keeps them as shims
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def load_frame(data: bytes, source: str) -> pd.DataFrame:
    """Unpickle one DataFrame through the restricted unpickler."""
    unpickler = RestrictedUnpickler(io.BytesIO(data))
    unpickler.source = source
    try:
        obj = unpickler.load()
    except DataError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise DataError(f"cannot read the pickle ({type(e).__name__}: {e})", file=source) from None
    if not isinstance(obj, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, found {type(obj).__name__}", file=source)
    return obj


def _member(zf: zipfile.ZipFile, basename: str) -> str:
    names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == basename and not n.startswith("__MACOSX")]
    if len(names) != 1:
        raise DataError(f"the zip should hold exactly one {basename}, found {len(names)}",
                        file="proc.zip")
    return names[0]


def convert(zf: zipfile.ZipFile, out_dir: Path) -> dict[str, int]:
    """Write interactions.csv, items.csv (and summary.json when present) into ``out_dir``.

    Returns row counts: {"interactions", "items", "users"}.
    """
    user2item = load_frame(zf.read(_member(zf, "user2item.pkl")), "user2item.pkl")
    item2title = load_frame(zf.read(_member(zf, "item2title.pkl")), "item2title.pkl")
    for frame, file, cols in ((user2item, "user2item.pkl", ["UserID", "ItemID", "Timestamp"]),
                              (item2title, "item2title.pkl", ["ItemID", "Title"])):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"missing column(s) {missing}; found {list(frame.columns)}", file=file)

    # One row per interaction, in the release's order: users as stored, each sequence as stored.
    lengths = user2item["ItemID"].map(len)
    if not (lengths == user2item["Timestamp"].map(len)).all():
        bad = int((lengths != user2item["Timestamp"].map(len)).to_numpy().argmax())
        raise DataError(f"user {user2item['UserID'].iloc[bad]}: ItemID and Timestamp lists differ in length",
                        file="user2item.pkl")
    inter = pd.DataFrame({
        "user_id": user2item["UserID"].repeat(lengths.to_numpy()).to_numpy(),
        "item_id": [i for seq in user2item["ItemID"] for i in seq],
        "timestamp": [t for seq in user2item["Timestamp"] for t in seq],
    })
    items = item2title.rename(columns={"ItemID": "item_id", "Title": "title"})[["item_id", "title"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    inter.to_csv(out_dir / "interactions.csv", index=False, lineterminator="\n")
    items.to_csv(out_dir / "items.csv", index=False, lineterminator="\n")
    summaries = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "summary.json"]
    if len(summaries) == 1:
        (out_dir / "summary.json").write_bytes(zf.read(summaries[0]))
    return {"interactions": len(inter), "items": len(items), "users": int(user2item["UserID"].nunique())}
