"""Layouts on disk: generic upload format, MovieLens CSV (small/20m/25m/32m) and ml-1m (.dat, latin-1)."""
from __future__ import annotations

from pathlib import Path

import pytest

from recdemo.data import DataError, load_dataset
from recdemo.data.formats import detect_layout, read_layout

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "example"


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        else:
            (folder / name).write_text(text, encoding="utf-8", newline="")
    return folder


def test_generic_minimal_columns(tmp_path):
    folder = write(tmp_path / "d", {
        "interactions.csv": "user_id,item_id,timestamp\nu1,x,5\nu1,y,6\n",
        "items.csv": "item_id,title\nx,Ex\ny,Why\n",
    })
    raw = read_layout(folder)
    assert detect_layout(folder) == "generic"
    assert "rating" not in raw.interactions.columns
    assert raw.items["attributes"].tolist() == [(), ()] and raw.items["description"].tolist() == ["", ""]
    assert raw.attribute_name == "categories"


def test_generic_all_columns_and_categories(tmp_path):
    folder = write(tmp_path / "d", {
        "interactions.csv": "user_id,item_id,timestamp,rating\nu1,x,5,4\n",
        "items.csv": "item_id,title,description,categories\nx,Ex,\"A long, quoted text\",Skin Care| Face ;Gift\n",
    })
    raw = read_layout(folder)
    assert raw.items["attributes"].tolist() == [("Skin Care", "Face", "Gift")]
    assert raw.items["description"].tolist() == ["A long, quoted text"]
    assert raw.interactions["rating"].tolist() == [4.0]


def test_generic_needs_both_files(tmp_path):
    folder = write(tmp_path / "d", {"interactions.csv": "user_id,item_id,timestamp\nu,x,1\n"})
    with pytest.raises(DataError, match="missing items.csv"):
        read_layout(folder)


def test_unknown_layout_lists_what_it_found(tmp_path):
    folder = write(tmp_path / "d", {"data.json": "{}"})
    with pytest.raises(DataError) as e:
        read_layout(folder)
    assert "interactions.csv + items.csv" in str(e.value) and "data.json" in str(e.value)


ML_RATINGS = "userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,3,4.0,964981247\r\n2,1,3.5,1445714835\r\n"
ML_MOVIES = ("movieId,title,genres\r\n1,Toy Box (1995),Adventure|Animation\r\n"
             "3,\"Old Men, Grumpier (1995)\",Comedy|Romance\r\n7,Unrated (2001),(no genres listed)\r\n")


@pytest.mark.parametrize("folder_name,name", [("ml-latest-small", "movielens-small"), ("ml-20m", "ml-20m"),
                                              ("ml-25m", "ml-25m"), ("ml-32m", "ml-32m")])
def test_movielens_csv_layouts(tmp_path, folder_name, name):
    write(tmp_path / folder_name, {"ratings.csv": ML_RATINGS, "movies.csv": ML_MOVIES,
                                   "tags.csv": "userId,movieId,tag,timestamp\r\n"})
    ds = load_dataset(name, root=str(tmp_path))
    assert ds.catalog.attribute_name == "genres"
    assert ds.catalog.titles == ["Toy Box (1995)", "Old Men, Grumpier (1995)"]  # unrated item 7 dropped
    assert ds.catalog.attributes[0] == ("Adventure", "Animation")
    assert ds.users == ["1", "2"]
    assert [list(s) for s in ds.sequences] == [[1, 0], [0]]  # user 1: movie 3 (t=...247) before 1
    assert ds.ratings[0].tolist() == [4.0, 4.0]


def test_movielens_1m_dat_layout_latin1(tmp_path):
    write(tmp_path / "ml-1m", {
        "ratings.dat": b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
        "movies.dat": "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                      "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
                      "2::Cit\xe9 des enfants perdus, La (1995)::Adventure|Sci-Fi\n".encode("latin-1"),
        "users.dat": b"1::F::1::10::48067\n",
    })
    ds = load_dataset("ml-1m", root=str(tmp_path))
    assert ds.catalog.ids == ["1193", "661"]
    assert ds.catalog.attributes[1] == ("Animation", "Children's", "Musical")
    assert [list(s) for s in ds.sequences] == [[0, 1], [0]]
    raw = read_layout(tmp_path / "ml-1m")
    assert "Cité des enfants perdus, La (1995)" in raw.items["title"].tolist()  # latin-1 decoded


def test_movielens_dat_errors_name_the_line(tmp_path):
    write(tmp_path / "ml-1m", {"ratings.dat": b"1::1193::5::978300760\n1::661::x::978302109\n",
                               "movies.dat": b"1193::A (1975)::Drama\n661::B (1996)::Drama\n"})
    with pytest.raises(DataError) as e:
        load_dataset("ml-1m", root=str(tmp_path))
    assert (e.value.file, e.value.line, e.value.column) == ("ratings.dat", 2, "rating")


def test_example_dataset_in_assets_loads():
    ds = load_dataset(None, data_dir=str(EXAMPLE))
    assert ds.n_items == 20 and len(ds.users) == 10 and ds.n_interactions == 53
    assert ds.ratings is not None and ds.catalog.attribute_name == "categories"
    assert all(ds.catalog.attributes) and all(ds.catalog.descriptions)
    assert len(ds.eval_cases("test")) == 10  # every example user has >= 3 items
