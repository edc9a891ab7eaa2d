"""The reports package imports in one direction: no module of it imports, even lazily, one that imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import harness.reports

PACKAGE = Path(harness.reports.__file__).parent


def _imports(path: Path) -> set[str]:
    """Modules of harness.reports that a file imports anywhere: top level, in functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found |= {n.split(".")[2] for n in names if n.startswith("harness.reports.")}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_reports_modules_import_one_another_without_a_cycle():
    graph = {path.stem: _imports(path) for path in PACKAGE.glob("*.py")}
    assert "compare" in graph and graph["plots"]  # the scan sees the package
    assert _cycle(graph) is None
