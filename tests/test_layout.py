"""The package's rooms, checked from the import graph: nothing imports upward, no stage imports
another stage, and there is no import cycle (function-level imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sa1b_cli"
STAGES = ("download", "verify", "extract", "show")
# Lower ranks are imported by higher ones, never the other way round.
RANK = {"core": 0, **dict.fromkeys(STAGES, 1), "app": 2, "devtools": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # the package itself only holds __version__
    return parts[1] if parts[1] in RANK else "app"


def imports_of(path: Path, known: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sa1b_cli")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "sa1b_cli":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imports_of(path, known) & known for name, path in paths.items()}


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        mine = room(module)
        for target in sorted(targets):
            theirs = room(target)
            if RANK[theirs] > RANK[mine]:
                found.append(f"{module} imports upward: {target}")
            elif RANK[mine] == 1 and theirs in STAGES and theirs != mine:
                found.append(f"stage {mine} imports stage {theirs}: {module} -> {target}")
    return found + [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 finished

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target == node.rpartition(".")[0]:
                continue  # a module reading its own package's __init__ is not a cycle
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_the_package_keeps_its_rooms():
    graph = import_graph()
    assert "sa1b_cli.download.engine" in graph and "sa1b_cli.core.store" in graph
    assert violations(graph) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"sa1b_cli.core.store": {"sa1b_cli.download.engine"}}, "imports upward"),
        ({"sa1b_cli.verify.layers": {"sa1b_cli.extract.shard"}}, "stage verify imports"),
        ({"sa1b_cli.download.engine": {"sa1b_cli.cli"}}, "imports upward"),
        ({"sa1b_cli.cli": {"sa1b_cli.ui"}, "sa1b_cli.ui": {"sa1b_cli.cli"}}, "import cycle"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(graph, expected):
    assert any(expected in v for v in violations(graph))


def test_each_room_says_what_it_is():
    for folder in ("core", *STAGES):
        init = PACKAGE / folder / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 2, f"{init} needs a two-line docstring"
