"""The house rules, read from the source with ``ast``: layers, no import circles, no private imports, small units.

Every import counts, those inside functions and under ``TYPE_CHECKING`` included: a lazy import is still a
dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnsearch"

LAYERS = {"errors": 0, "runtime": 1, "data": 2, "config": 3, "training": 3, "store": 4, "search": 5,
          "results": 6, "cli": 7, "__init__": 8, "__main__": 8}
"""A module may import its own package and packages of a lower rank; config and training, of one rank, know
nothing of each other. The data flow: cli -> config -> search -> training -> data, store beneath search,
results reading the store (docs/how-it-works.md, "The layers")."""

MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 80
"""Lines of a function's code, from its first statement after the docstring to its end."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in ``tree``, at any depth."""
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def internal_edges() -> dict[str, set[str]]:
    """Module -> the cnnsearch modules it imports (``from cnnsearch.x import y`` counts y when y is a module)."""
    known = set(modules())
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, tree in modules().items():
        for target, names, _ in imports(tree):
            if not target.startswith("cnnsearch"):
                continue
            subs = {f"{target}.{n}" for n in names} & known
            edges[name] |= subs or ({target} & known)
        edges[name].discard(name)
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer() -> None:
    assert {layer(m) for m in modules()} <= set(LAYERS), sorted({layer(m) for m in modules()} - set(LAYERS))


def test_no_import_circles() -> None:
    edges = internal_edges()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_layers_import_only_downward() -> None:
    wrong = []
    for name, targets in internal_edges().items():
        for target in targets:
            here, there = layer(name), layer(target)
            if here != there and LAYERS[there] >= LAYERS[here] and there not in ("errors",):
                wrong.append(f"{name} imports {target}")
            if there == "errors" or here == there:
                continue
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize(("package", "forbidden"), [
    ("training", ("optuna", "typer", "rich", "sqlalchemy")),
    ("data", ("optuna", "typer", "rich", "sqlalchemy")),
    ("config", ("torch", "optuna", "typer", "rich")),
    ("store", ("typer", "rich", "torch")),
    ("search", ("typer", "rich")),
    ("results", ("typer", "rich")),
])
def test_what_each_layer_knows_nothing_of(package: str, forbidden: tuple[str, ...]) -> None:
    found = [f"{name}:{line} imports {target}" for name, tree in modules().items() if layer(name) == package
             for target, _, line in imports(tree) if target.split(".")[0] in forbidden]
    assert not found, "\n".join(found)


def test_no_private_names_are_imported_across_modules() -> None:
    found = [f"{name}:{line} imports {n} from {target}" for name, tree in modules().items()
             for target, names, line in imports(tree) if target.startswith("cnnsearch")
             for n in names if n.startswith("_") and n != "__version__"]
    assert not found, "\n".join(found)


def test_modules_and_functions_stay_small() -> None:
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
                length = (node.end_lineno or node.lineno) - body[0].lineno + 1  # the code, not its docstring
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not long_modules, "\n".join(long_modules)
    assert not long_functions, "\n".join(long_functions)


def test_the_layout_test_sees_a_circle_and_a_private_import() -> None:
    """The checks above are not vacuous: they see what they look for in a made-up pair of modules."""
    tree = ast.parse("from cnnsearch.search.loop import _hidden\n\ndef f():\n    import cnnsearch.store.rows\n")
    assert [(t, n) for t, n, _ in imports(tree)] == [("cnnsearch.search.loop", ["_hidden"]),
                                                      ("cnnsearch.store.rows", [])]
    assert internal_edges()["cnnsearch.search.loop"], "the loop imports other modules: the graph is not empty"
