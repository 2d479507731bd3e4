"""The edits streamed between two states must rebuild the new state in the clients (issue 17: /recommend_stream)."""
import copy
import random

from gradio_client.utils import apply_diff

from recdemo.app.stream_diff import diff

OLD = {"stage": "retrieval", "results": [{"title": "A", "attributes": ["Action", "Crime", "Drama", "War"]},
                                         {"title": "B", "attributes": ["Comedy"]}], "profile": None}
NEW = {"stage": "rerank", "results": [{"title": "B", "attributes": ["Comedy", "Romance"]},
                                      {"title": "A", "attributes": ["Action"]}], "profile": {"summary": "x"}}


def test_a_list_shrinking_inside_a_list_element_applies():
    """The cards' reorder at the rerank state: gradio 6's own diff shifts that nested delete twice."""
    assert apply_diff(copy.deepcopy(OLD), diff(OLD, NEW)) == NEW


def test_random_nested_states_rebuild_exactly():
    rng = random.Random(0)

    def value(depth):
        kind = rng.choice(["list", "dict", "str", "int", "none"] if depth < 3 else ["str", "int", "none"])
        if kind == "list":
            return [value(depth + 1) for _ in range(rng.randint(0, 5))]
        if kind == "dict":
            return {k: value(depth + 1) for k in rng.sample("abcdef", rng.randint(0, 4))}
        return {"str": lambda: "ab"[: rng.randint(0, 2)] * rng.randint(1, 3), "int": lambda: rng.randint(0, 3),
                "none": lambda: None}[kind]()

    for _ in range(500):
        old, new = value(0), value(0)
        assert apply_diff(copy.deepcopy(old), diff(old, new)) == new


def test_growing_text_is_sent_as_its_new_part_and_equal_states_as_nothing():
    assert diff({"t": "Like"}, {"t": "Like Heat"}) == [["append", ["t"], " Heat"]]
    assert diff(NEW, copy.deepcopy(NEW)) == []


def test_the_app_streams_with_it():
    import gradio.utils

    from recdemo.app.stream_diff import install

    install()
    assert gradio.utils.diff is diff
