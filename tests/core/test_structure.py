"""The core's modules import one way: no cycle, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import layers.core

CORE = Path(layers.core.__file__).parent


def _imports(path: Path) -> set[str]:
    """The ``layers.core`` modules ``path`` imports at run time (TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "layers.core":
                found |= {f"layers.core.{alias.name}" for alias in node.names}
            elif node.module.startswith("layers.core."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("layers.core.")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"layers.core.{p.stem}": p for p in CORE.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def test_the_core_import_graph_has_no_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = " -> ".join([*path[path.index(module) :], module])
            raise AssertionError(f"import cycle: {cycle}")
        if module in done:
            return
        for dependency in sorted(graph[module]):
            visit(dependency, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_receive_path_imports_one_way() -> None:
    """layer -> local -> mailboxes, envelope, backend; never back."""
    graph = _graph()
    assert "layers.core.layer" not in graph["layers.core.local"]
    assert "layers.core.layer" not in graph["layers.core.mailboxes"]
    assert "layers.core.local" not in graph["layers.core.mailboxes"]
    assert "layers.core.local" in graph["layers.core.layer"]
