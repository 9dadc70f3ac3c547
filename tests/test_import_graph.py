"""The package's house rules: an import graph (lazy imports inside functions included) with no
cycle, rooms that import nothing above them, and modules of at most MAX_MODULE_LINES lines."""

from __future__ import annotations

import ast
import pathlib

import mobilenet_jax

PACKAGE = pathlib.Path(mobilenet_jax.__file__).parent
MAX_MODULE_LINES = 300


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports anywhere in its code.

    `from pkg import name` is an edge to the submodule `pkg.name` when there is one, else to `pkg`.
    """
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["mobilenet_jax.training.config"] >= {"mobilenet_jax.model", "mobilenet_jax.choices"}
    assert cycles(graph) == []


def rooms_imported(graph: dict[str, set[str]], module: str) -> set[str]:
    """The top-level rooms of the package (`interop`, `training`, ...) that `module` imports."""
    return {m.split(".")[1] for m in graph[module] if m.count(".") >= 1}


def test_the_model_knows_nothing_above_it():
    graph = import_graph()
    low = ["mobilenet_jax.model", "mobilenet_jax.layers", *(m for m in graph if m.startswith("mobilenet_jax.ops"))]
    for name in low:
        assert not rooms_imported(graph, name) & {"interop", "training", "export", "data"}, name


def test_export_reads_model_files_not_training_runs():
    graph = import_graph()
    assert "export" in rooms_imported(graph, "mobilenet_jax.export.exporters")
    for name in (m for m in graph if m.startswith("mobilenet_jax.export")):
        assert "training" not in rooms_imported(graph, name), name


def test_every_module_is_short():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert max(lengths.values()) > 200
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}
