"""The import graph of the package and the callbacks: no cycle (counting imports inside functions), the layers of
docs/ARCHITECTURE.md, and the export format at the bottom of the core."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("nxm_lightning", "callbacks")
EXPORT_FORMAT = "nxm_lightning.sparsity.export_format"
# What the export format may import of this project: the modules that say what N:M is and how a weight is seen.
EXPORT_FORMAT_ALLOWED = {"nxm_lightning.sparsity.nxm", "nxm_lightning.sparsity.targets"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module that ``path`` imports anywhere (module level, functions, ``if __name__ == "__main__"``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from package import module`
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: the project modules it imports}`` (a name imported from a module is that module)."""
    modules = project_modules()
    return {name: {m for m in imported_names(path, name) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    source = "from __future__ import annotations\nimport a.b\n\ndef f():\n    from .c import d\n    import e\n"
    (tmp_path / "x.py").write_text(source)
    assert {"a.b", "pkg.c", "pkg.c.d", "e"} <= imported_names(tmp_path / "x.py", "pkg.x")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "nxm_lightning.sparsity.verify" in graph and "callbacks.hard_prune" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_layers_import_only_those_below() -> None:
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("nxm_lightning.sparsity"):
            assert not {m for m in imported if m.startswith(("nxm_lightning.tasks", "callbacks"))}, name
        if name.startswith("nxm_lightning.tasks"):
            assert not {m for m in imported if m.startswith("callbacks")}, name


def test_export_format_is_at_the_bottom_of_the_core() -> None:
    modules = project_modules()
    imported = imported_names(modules[EXPORT_FORMAT], EXPORT_FORMAT)
    assert {m for m in imported if m in modules} <= EXPORT_FORMAT_ALLOWED
    others = {m.partition(".")[0] for m in imported if not m.startswith("nxm_lightning")} - {"torch", "__future__"}
    assert others <= set(sys.stdlib_module_names), others - set(sys.stdlib_module_names)
