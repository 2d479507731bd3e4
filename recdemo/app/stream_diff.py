"""The edits gradio streams between two yields of a generator event, with list deletes that apply.

Gradio sends a streamed output as a list of edits against the previous one (``gradio.utils.diff``;
both clients apply them in order: ``gradio_client.utils.apply_diff`` and the page's JavaScript). In
gradio 6 that function shifts the index of every list delete once per enclosing list, so a list that
shrinks inside a list element (a card's genres when the LLM reorders the cards) gets a shifted delete
twice and the client fails (``IndexError`` in ``apply_diff``): /recommend_stream broke on the first
reorder. ``diff`` makes the same kinds of edits, deleting each list's surplus from its end, so every
index is valid when it is applied; ``install`` puts it in gradio's place (once, at launch).
"""
from __future__ import annotations


def diff(old, new) -> list[list]:
    """Edits ``[action, path, value]`` turning ``old`` into ``new`` (actions: replace, append, add, delete)."""
    return _edits(old, new, [])


def _edits(a, b, path: list) -> list[list]:
    if a == b:
        return []
    if type(a) is not type(b):
        return [["replace", path, b]]
    if isinstance(a, str) and b.startswith(a):
        return [["append", path, b[len(a):]]]  # streamed text grows at its end: send only the new part
    if isinstance(a, list):
        common = min(len(a), len(b))
        out = [e for i in range(common) for e in _edits(a[i], b[i], path + [i])]
        out += [["delete", path + [i], None] for i in range(len(a) - 1, common - 1, -1)]  # last first
        out += [["add", path + [i], b[i]] for i in range(common, len(b))]
        return out
    if isinstance(a, dict):
        out = [e for k in a if k in b for e in _edits(a[k], b[k], path + [k])]
        out += [["delete", path + [k], None] for k in a if k not in b]
        out += [["add", path + [k], b[k]] for k in b if k not in a]
        return out
    return [["replace", path, b]]


def install() -> None:
    """Gradio's streamed outputs use ``diff`` from now on (gradio.blocks calls ``utils.diff``)."""
    from gradio import utils

    utils.diff = diff
