"""records.jsonable: what the app's API and the CLI's --json both emit."""
import json

import numpy as np

from recdemo.records import Keyword, jsonable


def test_jsonable_turns_numpy_tuples_and_records_into_plain_json():
    data = {"score": np.float32(0.5), "rank": np.int64(3), "vec": np.arange(3), "pair": (1, 2),
            "kw": Keyword("comedy", [1], True), "flag": np.bool_(True)}
    out = jsonable(data)
    assert out == {"score": 0.5, "rank": 3, "vec": [0, 1, 2], "pair": [1, 2],
                   "kw": {"text": "comedy", "support": [1], "grounded": True, "source": "llm"}, "flag": True}
    assert type(out["rank"]) is int and type(out["score"]) is float and type(out["flag"]) is bool
    assert json.loads(json.dumps(out)) == out
