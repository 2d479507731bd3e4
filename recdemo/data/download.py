"""`python -m recdemo data download NAME` and `data info`: fetch a built-in dataset, verify it, unpack it.

The order of steps is what keeps a bad download from ever looking like a dataset:
download to a temp file -> check size/sha256 -> open the zip -> extract (or convert) into a temp
folder next to the target -> verify every file's sha256 (or row counts) -> load it once as a
dataset -> swap the folder into place (recdemo.storage.write_dir_atomically). Any failure removes the temp files; the target folder
appears only complete, and an existing copy is replaced only after the new one passed every check.
"""
from __future__ import annotations

import csv
import hashlib
import io
import http.client
import json
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from recdemo.data.dataset import BUILTIN_FOLDERS, build_dataset, load_dataset, resolve_folder
from recdemo.errors import DataError
from recdemo.data.formats import read_layout
from recdemo.data.seqrec import convert
from recdemo.storage import write_dir_atomically


@dataclass
class Source:
    name: str
    url: str
    kind: str  # "zip": files inside a folder of the zip; "seqrec": pickles converted to CSV
    zip_prefix: str = ""  # folder inside the zip holding the files ("zip" kind)
    zip_sha256: str | None = None  # None: the publisher does not publish one; members are checked
    zip_bytes: int | None = None
    files: dict[str, str] = field(default_factory=dict)  # file -> sha256 of what ends up on disk
    rows: dict[str, int] = field(default_factory=dict)  # file -> data rows, the fallback check
    max_bytes: int = 200 * 2**20  # refuse to download more than this


SOURCES = {
    # sha256 of the GroupLens members as listed in ../shared/data/ml-latest-small/SOURCE.md.
    "movielens-small": Source(
        name="movielens-small",
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        kind="zip", zip_prefix="ml-latest-small/",
        files={
            "README.txt": "63d22ac138e80fae37021797ed8e1b9424b5239dc576a137422adf783ae3f404",
            "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
            "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
            "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
        },
        rows={"ratings.csv": 100836, "movies.csv": 9742},
    ),
    # SeqRec Benchmark release, pinned to a commit; zip and converted CSVs as in SOURCE.md.
    "amazon-beauty": Source(
        name="amazon-beauty",
        url="https://raw.githubusercontent.com/Tiny-Snow/SeqRecBenchmark-Datasets/"
            "3bc413edfdf5c8bf408efe63db7b63f0f8d37503/data/amazon2014-beauty/proc.zip",
        kind="seqrec",
        zip_sha256="04dcb540be5e1fac0acabee8e4720ffca859fd50261e901769f2102b0acd0f91",
        zip_bytes=1_160_906,
        files={
            "interactions.csv": "92697063381fee62d25c3d5d9511089b0c561b89bb4d670fb48ff52abbc58a8e",
            "items.csv": "5c0bea7bdd3f7f0989cdda1e100020af79e2b1c8ecd00cd44a4c6a4f35e63a1c",
        },
        rows={"interactions.csv": 198215, "items.csv": 12086},
    ),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, max_bytes: int, progress=None, timeout: float = 60) -> str:
    """Stream ``url`` into ``dest``; returns the sha256. Short or oversized downloads are errors."""
    h = hashlib.sha256()
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, dest.open("wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            if total is not None and total > max_bytes:
                raise DataError(f"the server offers {total / 2**20:.1f} MB, more than the "
                                f"{max_bytes / 2**20:.0f} MB expected for this dataset", file=url)
            last = 0.0
            while chunk := resp.read(2**16):
                got += len(chunk)
                if got > max_bytes:
                    raise DataError(f"download exceeds {max_bytes / 2**20:.0f} MB; stopped", file=url)
                h.update(chunk)
                out.write(chunk)
                if progress and time.monotonic() - last > 1:
                    last = time.monotonic()
                    progress(got, total)
            if total is not None and got != total:
                raise DataError(f"download cut short: got {got:,} of {total:,} bytes; run it again",
                                file=url)
    except http.client.IncompleteRead as e:
        raise DataError(f"download cut short after {got + len(e.partial):,} bytes; run it again",
                        file=url) from None
    except urllib.error.HTTPError as e:
        raise DataError(f"the server answered HTTP {e.code} {e.reason}", file=url) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot download ({reason}); check the network, or use --url with a mirror "
                        "or copy the files there by hand", file=url) from None
    if progress:
        progress(got, got)
    return h.hexdigest()


def _extract(zf: zipfile.ZipFile, source: Source, out: Path) -> None:
    """Copy the pinned files out of the zip (nothing else: no paths outside ``out`` are possible)."""
    names = set(zf.namelist())
    for rel in source.files:
        member = source.zip_prefix + rel
        if member not in names:
            raise DataError(f"{member} is missing from the zip (not the expected release)",
                            file=source.url.rsplit("/", 1)[-1])
        target = out / PurePosixPath(rel).name
        with zf.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def _verify(out: Path, source: Source, zip_name: str) -> list[str]:
    """Check every pinned file; returns notes. Mismatches are errors, except a converted CSV whose
    bytes differ from the reference conversion but whose row counts match (noted, not fatal)."""
    notes = []
    for rel, expected in source.files.items():
        path = out / PurePosixPath(rel).name
        actual = sha256_file(path)
        if actual == expected:
            continue
        if source.kind == "seqrec" and rel in source.rows:
            with path.open("rb") as f:
                rows = sum(1 for _ in csv.reader(io.TextIOWrapper(f, "utf-8", newline=""))) - 1
            if rows == source.rows[rel]:
                notes.append(f"{rel}: bytes differ from the reference conversion, row count "
                             f"{rows:,} matches")
                continue
            raise DataError(f"{rows:,} rows after conversion, expected {source.rows[rel]:,}",
                            file=rel)
        raise DataError(f"sha256 {actual[:12]}... does not match the published {expected[:12]}... "
                        "(a corrupted download or a different release)", file=f"{zip_name}: {rel}")
    return notes


def download(name: str, root: str | Path, url: str | None = None, force: bool = False,
             log=print) -> Path:
    """Download, verify and unpack built-in dataset ``name`` into ``root``; returns its folder."""
    if name not in SOURCES:
        raise DataError(f"no download for {name!r}: `data download` knows {sorted(SOURCES)}; other "
                        "datasets (ml-1m, ml-20m, ...) come from their publisher: unpack them under "
                        f"{root} or point --data-dir at them")
    source = SOURCES[name]
    root = Path(root).expanduser()
    target = root / BUILTIN_FOLDERS[name]
    if target.exists() and not force:
        log(f"{name} is already at {target} (use --force to download it again)")
        return target
    url = url or source.url
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    loaded = []
    try:  # the folder appears only complete; an existing copy is replaced only by a verified one
        write_dir_atomically(target, lambda out: loaded.append(_fetch_into(out, name, source, url, target, log)))
    except BaseException:
        if made_root and not any(root.iterdir()):
            root.rmdir()  # a failed first download leaves no empty data root either
        raise
    ds = loaded[0]
    log(f"{name}: {len(ds.users):,} users, {ds.n_items:,} items, {ds.n_interactions:,} interactions "
        f"-> {target}")
    return target


def _fetch_into(out: Path, name: str, source: Source, url: str, target: Path, log):
    """Download, check, unpack and load ``name`` into the (temporary) folder ``out``; returns the dataset."""
    zip_path = out / "download.zip"
    log(f"downloading {url}")
    digest = fetch(url, zip_path, source.max_bytes, progress=_progress_printer(log))
    zip_name = url.rsplit("/", 1)[-1] or "download"
    if source.zip_bytes is not None and zip_path.stat().st_size != source.zip_bytes:
        raise DataError(f"{zip_path.stat().st_size:,} bytes, expected {source.zip_bytes:,} "
                        "(a corrupted download or a different release)", file=zip_name)
    if source.zip_sha256 is not None and digest != source.zip_sha256:
        raise DataError(f"sha256 {digest[:12]}... does not match the pinned {source.zip_sha256[:12]}... "
                        "(a corrupted download or a different release)", file=zip_name)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            if source.kind == "seqrec":
                counts = convert(zf, out)
                log(f"converted: {counts['users']:,} users, {counts['items']:,} items, "
                    f"{counts['interactions']:,} interactions")
            else:
                _extract(zf, source, out)
    except (zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"not a valid zip file ({e}): the download is corrupted; run it again",
                        file=zip_name) from None
    zip_path.unlink()
    for note in _verify(out, source, zip_name):
        log(f"note: {note}")
    ds = build_dataset(read_layout(out), name=name, source=str(target))  # loads: usable
    (out / "download.json").write_text(json.dumps({
        "dataset": name, "url": url, "zip_sha256": digest,
        "downloaded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {rel: sha256_file(out / PurePosixPath(rel).name) for rel in source.files},
    }, indent=2))
    return ds


def _progress_printer(log):
    def show(got: int, total: int | None) -> None:
        if total:
            log(f"  {got / 2**20:.1f} / {total / 2**20:.1f} MB")
        else:
            log(f"  {got / 2**20:.1f} MB")
    return show


def info(data_cfg) -> list[str]:
    """Lines describing the dataset a DataConfig names (``dataset`` or ``data_dir``)."""
    d = data_cfg
    folder = resolve_folder(d.dataset, d.data_dir, d.root)
    ds = load_dataset(d.dataset, d.data_dir, d.root, d.max_file_mb)
    s = ds.summary()
    cat = ds.catalog
    return [f"{s['name']}  ({folder})",
            f"  users {s['users']:,}   items {s['items']:,}   interactions {s['interactions']:,}   "
            f"mean length {s['mean_length']:.1f}",
            f"  {cat.attribute_name}: {'yes' if any(cat.attributes) else 'none'}   "
            f"ratings: {'yes' if ds.ratings is not None else 'no'}   content hash {s['hash']}",
            "  first items: " + "; ".join(cat.titles[:3])]


def builtin_status(root: str | Path) -> list[str]:
    root = Path(root).expanduser()
    lines = [f"data root: {root}  (set RECDEMO_DATA_DIR or --data-root to change it)"]
    for name, folder in BUILTIN_FOLDERS.items():
        path = root / folder
        state = "present" if path.is_dir() else (
            "missing: python -m recdemo data download " + name if name in SOURCES else
            "missing: get it from grouplens.org and unpack it here")
        lines.append(f"  {name:16} {path}  {state}")
    return lines
