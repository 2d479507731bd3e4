"""`data download`: served by a local HTTP server (127.0.0.1) from zips the tests build; the pinned
hashes are patched to the test files. A bad download must be rejected and leave no folder behind."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from conftest import real_data_root

from recdemo.cli.main import main
from recdemo.data import DataError, load_dataset
from recdemo.data import download as dl

ML_FILES = {
    "README.txt": "A tiny invented MovieLens-shaped test set.\n",
    "ratings.csv": "userId,movieId,rating,timestamp\r\n1,1,4.0,10\r\n1,2,3.0,20\r\n1,3,5.0,30\r\n"
                   "2,2,4.0,11\r\n2,3,2.0,12\r\n",
    "movies.csv": "movieId,title,genres\r\n1,First Film (1990),Drama\r\n2,\"Second, The (1991)\",Comedy|Drama\r\n"
                  "3,Third Film (1992),Horror\r\n",
    "links.csv": "movieId,imdbId,tmdbId\r\n1,1,1\r\n",
    "tags.csv": "userId,movieId,tag,timestamp\r\n",
}


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def make_zip(members: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Server:
    """Serves ``files`` (path -> bytes); '/short/<name>' announces more bytes than it sends."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                short = self.path.startswith("/short/")
                body = outer.files.get(self.path.replace("/short/", "/", 1))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (5000 if short else 0)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def ml_source(monkeypatch, server):
    """movielens-small pinned to the test files, served at /ml.zip."""
    server.files["/ml.zip"] = make_zip({f"ml-latest-small/{k}": v for k, v in ML_FILES.items()})
    source = replace(dl.SOURCES["movielens-small"], url=server.url + "/ml.zip",
                     files={k: sha(v) for k, v in ML_FILES.items()})
    monkeypatch.setitem(dl.SOURCES, "movielens-small", source)
    return source


def quiet(*_):
    pass


def test_download_verifies_and_unpacks(tmp_path, ml_source):
    folder = dl.download("movielens-small", tmp_path, log=quiet)
    assert folder == tmp_path / "ml-latest-small"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*ML_FILES, "download.json"])
    assert (folder / "ratings.csv").read_bytes() == ML_FILES["ratings.csv"].encode()  # CRLF kept
    assert os.listdir(tmp_path) == ["ml-latest-small"]  # no temp leftovers
    ds = load_dataset("movielens-small", root=str(tmp_path))
    assert (len(ds.users), ds.n_items) == (2, 3) and ds.catalog.titles[1] == "Second, The (1991)"


def test_corrupted_member_is_rejected_and_leaves_nothing(tmp_path, server, ml_source):
    bad = dict(ML_FILES, **{"ratings.csv": ML_FILES["ratings.csv"].replace("4.0", "4.5", 1)})
    server.files["/ml.zip"] = make_zip({f"ml-latest-small/{k}": v for k, v in bad.items()})
    with pytest.raises(DataError) as e:
        dl.download("movielens-small", tmp_path, log=quiet)
    assert "ratings.csv" in str(e.value) and "sha256" in str(e.value) and "corrupted" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_truncated_zip_is_rejected(tmp_path, server, ml_source):
    server.files["/ml.zip"] = server.files["/ml.zip"][:-200]
    with pytest.raises(DataError, match="not a valid zip"):
        dl.download("movielens-small", tmp_path, log=quiet)
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="not a valid zip"):  # a data root it had to create goes too
        dl.download("movielens-small", tmp_path / "new" / "root", log=quiet)
    assert os.listdir(tmp_path) == ["new"] and os.listdir(tmp_path / "new") == []


def test_interrupted_download_is_rejected(tmp_path, server, ml_source):
    with pytest.raises(DataError, match="cut short"):
        dl.download("movielens-small", tmp_path, url=server.url + "/short/ml.zip", log=quiet)
    assert os.listdir(tmp_path) == []


def test_http_error_and_missing_member(tmp_path, server, ml_source):
    with pytest.raises(DataError, match="HTTP 404"):
        dl.download("movielens-small", tmp_path, url=server.url + "/nothing.zip", log=quiet)
    server.files["/ml.zip"] = make_zip({f"ml-latest-small/{k}": v for k, v in ML_FILES.items() if k != "tags.csv"})
    with pytest.raises(DataError, match="ml-latest-small/tags.csv is missing"):
        dl.download("movielens-small", tmp_path, log=quiet)
    assert os.listdir(tmp_path) == []


def test_existing_copy_is_kept_unless_forced(tmp_path, server, ml_source):
    old = tmp_path / "ml-latest-small"
    old.mkdir()
    (old / "marker").write_text("old")
    assert dl.download("movielens-small", tmp_path, log=quiet) == old
    assert server.requests == [] and (old / "marker").exists()  # nothing fetched
    # --force with a corrupted download: the old copy survives untouched
    good = server.files["/ml.zip"]
    server.files["/ml.zip"] = good[:100]
    with pytest.raises(DataError):
        dl.download("movielens-small", tmp_path, force=True, log=quiet)
    assert (old / "marker").exists() and os.listdir(tmp_path) == ["ml-latest-small"]
    server.files["/ml.zip"] = good
    dl.download("movielens-small", tmp_path, force=True, log=quiet)
    assert not (old / "marker").exists() and (old / "ratings.csv").is_file()
    assert os.listdir(tmp_path) == ["ml-latest-small"]


def test_cli_download_and_info(tmp_path, server, ml_source, capsys):
    root = str(tmp_path / "root")
    assert main(["data", "download", "movielens-small", "--data-root", root]) == 0
    assert main(["data", "info", "movielens-small", "--data-root", root]) == 0
    out = capsys.readouterr().out
    assert "users 2" in out and "items 3" in out
    assert main(["data", "info", "--data-root", root]) == 0
    out = capsys.readouterr().out
    assert "movielens-small" in out and "present" in out and "amazon-beauty" in out
    server.files["/bad.zip"] = b"<html>not a zip</html>"
    rc = main(["data", "download", "movielens-small", "--data-root", str(tmp_path / "r2"),
               "--url", server.url + "/bad.zip"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "not a valid zip" in err and "Traceback" not in err
    assert main(["data", "download", "ml-1m", "--data-root", root]) == 2
    assert "no download for 'ml-1m'" in capsys.readouterr().err


# -- amazon-beauty: pickles in a zip, converted to CSV ----------------------------------------

USERS = pd.DataFrame({"UserID": [100, 101, 102],
                      "ItemID": [[100, 101, 102], [101, 100, 102], [102, 100, 101]],
                      "Timestamp": [[86400, 86400, 172800], [0, 86400, 86400], [5, 6, 7]]})
TITLES = pd.DataFrame({"ItemID": [100, 101, 102],
                       "Title": ["Rose &amp; Mint Soap", "Lip \"Gloss\", Pink", "Cream \nVanilla"]})
EXPECTED_INTER = ("user_id,item_id,timestamp\n100,100,86400\n100,101,86400\n100,102,172800\n"
                  "101,101,0\n101,100,86400\n101,102,86400\n102,102,5\n102,100,6\n102,101,7\n")
EXPECTED_ITEMS = ('item_id,title\n100,Rose &amp; Mint Soap\n101,"Lip ""Gloss"", Pink"\n'
                  '102,"Cream \nVanilla"\n')


def seqrec_zip(user2item=USERS, item2title=TITLES) -> bytes:
    return make_zip({"proc/user2item.pkl": pickle.dumps(user2item, protocol=5),
                     "proc/item2title.pkl": pickle.dumps(item2title, protocol=5),
                     "proc/summary.json": '{"user_size": 3}'})


@pytest.fixture
def beauty(monkeypatch, server):
    def pin(data: bytes, **files):
        server.files["/proc.zip"] = data
        source = replace(dl.SOURCES["amazon-beauty"], url=server.url + "/proc.zip", zip_sha256=sha(data),
                         zip_bytes=len(data), rows={"interactions.csv": 9, "items.csv": 3},
                         files={"interactions.csv": files.get("inter", sha(EXPECTED_INTER)),
                                "items.csv": files.get("items", sha(EXPECTED_ITEMS))})
        monkeypatch.setitem(dl.SOURCES, "amazon-beauty", source)
        return source
    return pin


def test_seqrec_zip_is_converted_exactly(tmp_path, beauty):
    beauty(seqrec_zip())
    logs = []
    folder = dl.download("amazon-beauty", tmp_path, log=logs.append)
    assert (folder / "interactions.csv").read_text() == EXPECTED_INTER  # release order kept
    assert (folder / "items.csv").read_bytes() == EXPECTED_ITEMS.encode()  # entities kept raw
    assert not any(line.startswith("note:") for line in logs)
    ds = load_dataset("amazon-beauty", root=str(tmp_path))
    assert ds.catalog.titles[0] == "Rose & Mint Soap" and ds.catalog.titles[2] == "Cream Vanilla"
    # same-day ties keep the release's order
    assert [ds.catalog.ids[i] for i in ds.sequences[0]] == ["100", "101", "102"]


def test_row_counts_are_the_fallback_check(tmp_path, beauty):
    beauty(seqrec_zip(), items=sha("something else"))
    logs = []
    dl.download("amazon-beauty", tmp_path, log=logs.append)
    assert any("items.csv" in line and "row count 3 matches" in line for line in logs)
    users = USERS.assign(ItemID=[[100, 101], [101, 100, 102], [102, 100, 101]],
                         Timestamp=[[1, 2], [0, 86400, 86400], [5, 6, 7]])
    beauty(seqrec_zip(users), inter=sha("different"))
    with pytest.raises(DataError, match="8 rows after conversion, expected 9"):
        dl.download("amazon-beauty", tmp_path / "r2", log=quiet)
    assert not (tmp_path / "r2").exists()


class Evil:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_wrong_zip_hash_is_rejected_before_any_unpickling(tmp_path, beauty, server):
    marker = tmp_path / "pwned"
    good = seqrec_zip()
    beauty(good)
    server.files["/proc.zip"] = make_zip({"proc/user2item.pkl": pickle.dumps(Evil(marker)),
                                          "proc/item2title.pkl": pickle.dumps(TITLES)})
    with pytest.raises(DataError, match="bytes, expected|sha256"):
        dl.download("amazon-beauty", tmp_path / "root", log=quiet)
    assert not marker.exists() and not (tmp_path / "root").exists()


def test_restricted_unpickler_refuses_code_even_with_a_matching_hash(tmp_path, beauty):
    marker = tmp_path / "pwned"
    beauty(make_zip({"proc/user2item.pkl": pickle.dumps(Evil(marker), protocol=5),
                     "proc/item2title.pkl": pickle.dumps(TITLES, protocol=5)}))
    with pytest.raises(DataError, match="refusing to load io.open"):
        dl.download("amazon-beauty", tmp_path / "root", log=quiet)
    assert not marker.exists() and not (tmp_path / "root").exists()


@pytest.mark.integration
def test_real_amazon_conversion_reproduces_the_pinned_csvs(tmp_path, monkeypatch, server):
    """Rebuild the release's pickles from the real CSVs (as its processing script lays them out:
    one row per user with item and timestamp lists), serve them, and check that the downloader's
    conversion gives back the CSVs byte for byte (the sha256s pinned from SOURCE.md)."""
    src = Path(real_data_root("amazon-beauty"), "amazon-beauty")
    inter = pd.read_csv(src / "interactions.csv")
    items = pd.read_csv(src / "items.csv", keep_default_na=False)
    grouped = inter.groupby("user_id", sort=True)
    user2item = pd.DataFrame({"UserID": list(grouped.groups),
                              "ItemID": grouped["item_id"].agg(list).tolist(),
                              "Timestamp": grouped["timestamp"].agg(list).tolist()})
    item2title = items.rename(columns={"item_id": "ItemID", "title": "Title"})
    data = seqrec_zip(user2item, item2title)
    server.files["/proc.zip"] = data
    pinned = dl.SOURCES["amazon-beauty"]
    monkeypatch.setitem(dl.SOURCES, "amazon-beauty", replace(pinned, url=server.url + "/proc.zip",
                                                             zip_sha256=sha(data), zip_bytes=len(data)))
    logs = []
    folder = dl.download("amazon-beauty", tmp_path, log=logs.append)
    assert not any(line.startswith("note:") for line in logs), logs
    for name, digest in pinned.files.items():
        assert dl.sha256_file(folder / name) == digest
