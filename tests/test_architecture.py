"""The house rules of docs/ARCHITECTURE.md, checked on the source: imports point down the layers
(function-local imports included), no import cycles, no function over 80 lines, env vars read
in config.py only."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recdemo"

# Lower number = lower layer. A module may import its own layer's package and any lower layer.
LAYERS = {
    "config": 0, "records": 0, "errors": 0, "metrics": 0, "storage": 0,
    "data": 1,
    "retrieval": 2,
    "llm": 3,
    "eval": 4, "pipeline": 4,
    "finetune": 5,
    "app": 6,
    "cli": 7,
    "__main__": 8,
}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return out


def imported(name: str, tree: ast.Module) -> set[str]:
    """Every recdemo module ``name`` imports, anywhere in the file (relative imports resolved)."""
    is_pkg = (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "recdemo" or m.startswith("recdemo.")}


def layer_of(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else ""
    assert top in LAYERS, f"{module}: put it in a layer of tests/test_architecture.py and docs/ARCHITECTURE.md"
    return top, LAYERS[top]


def test_imports_point_down_the_layers():
    mods = modules()
    wrong = []
    for name, tree in mods.items():
        if name == "recdemo":
            continue
        top, level = layer_of(name)
        for target in imported(name, tree):
            if target not in mods:  # ``from recdemo.x import name``: a name, not a module
                continue
            if target == "recdemo":
                continue
            ttop, tlevel = layer_of(target)
            if tlevel > level or (tlevel == level and ttop != top and level > 0):
                wrong.append(f"{name} imports {target} ({ttop} is not below {top})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    mods = modules()
    graph = {n: {t for t in imported(n, tree) if t in mods and t != n and t != "recdemo"}
             for n, tree in mods.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of meaning
    graph = {n: {t for t in ts if not (n.startswith(t + ".") and t in graph)} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_no_function_over_80_lines():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_env_vars_are_read_in_config_only():
    readers = []
    for name, tree in modules().items():
        if name == "recdemo.config":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(f"{name}: line {node.lineno}")
    assert not readers, "\n".join(readers)


@pytest.mark.parametrize("rule", ["down", "cycle"])
def test_the_checks_catch_a_violation(tmp_path, rule):
    """The checks above can fail: an upward import and a cycle in a scratch package are found."""
    pkg = tmp_path / "recdemo"
    (pkg / "data").mkdir(parents=True)
    (pkg / "llm").mkdir()
    for f in ("__init__.py", "data/__init__.py", "llm/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from recdemo.llm import b\n")
    (pkg / "llm" / "b.py").write_text("from recdemo.data import a\n" if rule == "cycle" else "")
    globals()["PACKAGE"] = pkg
    try:
        check = test_imports_point_down_the_layers if rule == "down" else test_no_import_cycles
        with pytest.raises(AssertionError, match="recdemo.data.a"):
            check()
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "recdemo"
