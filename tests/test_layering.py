"""The house's import graph, read from the source (every import, including those only for type checkers and those
inside functions): no circles between files, and nothing imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("accel", "atomic", "calibration", "coin", "models", "policies", "reports", "resultschema", "scenarios", "sim",
         "testbed")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph(root: Path = ROOT) -> dict[str, set[str]]:
    """File-level imports between the project's modules: module → the project modules it names."""
    files = {_module_name(p, root): p for room in ROOMS for p in (root / room).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import mod` names the module, not the package's __init__; `from mod import x` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # `from a.b import c`: c may be a name, not a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle_and_reads_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "__init__.py").write_text("")
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n"
    (tmp_path / "sim" / "a.py").write_text(typing_only)
    (tmp_path / "sim" / "b.py").write_text("def f():\n    from sim.a import Y\n")
    (tmp_path / "sim" / "c.py").write_text("import sim.b\n")
    graph = _graph(tmp_path)
    assert graph["sim.a"] == {"sim.b"} and graph["sim.b"] == {"sim.a"} and graph["sim.c"] == {"sim.b"}
    assert _circles(graph) == [["sim.a", "sim.b"]]


def test_no_import_circles_not_even_for_type_checkers() -> None:
    graph = _graph()
    assert len(graph) > 80 and {name.split(".")[0] for name in graph} == set(ROOMS)  # every room was read
    assert _circles(graph) == []


def test_nothing_imports_the_cli() -> None:
    graph = _graph()
    assert [name for name, targets in graph.items() if "scenarios.cli" in targets] == []
