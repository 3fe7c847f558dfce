"""The import structure of `lightning_mtl/` and `datamodules/`: no cycle, layers go one way.

Every import counts, at module level or inside a function (a function-level import hides a
cycle, it does not remove it). Importing `a.b.c` from outside package `a.b` also runs `a/__init__`
and `a/b/__init__`, so those count as imported too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_mtl", "datamodules")

#: Layers, lowest first; a module may import its own layer or a lower one. The longest matching
#: prefix decides; package `__init__` files only re-export and are checked for cycles alone.
LAYERS: dict[str, int] = {
    "lightning_mtl.registry": 0,
    "lightning_mtl.targets": 0,
    "lightning_mtl.tasks": 1,
    "lightning_mtl.metrics": 1,
    "lightning_mtl.weighting": 1,
    "lightning_mtl.models": 1,
    "lightning_mtl.sparsity": 1,
    "lightning_mtl.lomt.model": 1,
    "lightning_mtl.lomt.selection": 1,
    "lightning_mtl.meta.inner_loop": 1,
    "lightning_mtl.runs": 1,
    "lightning_mtl.reporting": 1,
    "lightning_mtl.figures": 1,
    "lightning_mtl.tables": 1,
    "lightning_mtl.modules": 2,
    "lightning_mtl.callbacks": 2,
    "lightning_mtl.meta.module": 2,
    "lightning_mtl.checkpoint_io": 2,
    "lightning_mtl.loggers": 2,
    "datamodules": 2,
    "lightning_mtl.pipelines": 3,
    "lightning_mtl.lomt.pipeline": 3,
    "lightning_mtl.meta.meta_test": 3,
    "lightning_mtl.meta.pipeline": 3,
    "lightning_mtl.meta.study": 3,
    "lightning_mtl.benchmarks": 3,
    "lightning_mtl.cli": 4,
}
LAYER_NAMES = (
    "contract",
    "library (no Lightning)",
    "Lightning pieces and data",
    "pipelines",
    "CLI",
)
#: what the datamodules may import of the library: the batch contract and the registry
DATAMODULE_IMPORTS = ("lightning_mtl.targets", "lightning_mtl.registry")


def _module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """Every in-project module `name` imports, anywhere in the file."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES}


def _edges(name: str) -> set[str]:
    """Imported modules plus the package `__init__`s the import runs (those outside `name`)."""
    edges = set()
    for target in _imports(name):
        parts = target.split(".")
        for end in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:end])
            inside = name == ancestor or name.startswith(ancestor + ".")
            if ancestor in MODULES and ancestor != name and not inside:
                edges.add(ancestor)
    return edges


GRAPH = {name: _edges(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(name: str) -> int | None:
    matches = [p for p in LAYERS if name == p or name.startswith(p + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def test_the_checker_finds_a_cycle_and_package_init_edges():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # importing the library's contract from outside runs the library's package __init__ too
    assert "lightning_mtl" in GRAPH["datamodules.synthetic.datamodule"]
    # a module inside a package does not depend on its own package's __init__
    assert "lightning_mtl.models" not in GRAPH["lightning_mtl.models.builder"]


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles (module-level and function-level imports count):\n" + (
        "\n".join(" ↔ ".join(c) for c in cycles)
    )


def test_every_module_has_a_layer():
    missing = [n for n in MODULES if _layer(n) is None and not _is_package(n)]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


@pytest.mark.parametrize("name", [n for n in MODULES if not _is_package(n)])
def test_imports_go_down_the_layers(name):
    own = _layer(name)
    upward = sorted(
        f"{t} ({LAYER_NAMES[_layer(t)]})"
        for t in _imports(name)
        if not _is_package(t) and _layer(t) is not None and _layer(t) > own
    )
    assert not upward, f"{name} ({LAYER_NAMES[own]}) imports from higher layers: {upward}"


def test_the_lowest_layers_do_not_import_lightning():
    for name in MODULES:
        if _layer(name) not in (0, 1) or _is_package(name):
            continue
        tree = ast.parse(MODULES[name].read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bad = [n for n in names if n == "lightning" or n.startswith(("lightning.", "pytorch_"))]
            assert not bad, f"{name} imports {bad}: the library layer runs without Lightning"


def test_datamodules_import_only_the_contract():
    for name in MODULES:
        if not name.startswith("datamodules"):
            continue
        library = {t for t in _imports(name) if t.startswith("lightning_mtl")}
        extra = sorted(t for t in library if t not in DATAMODULE_IMPORTS)
        assert not extra, f"{name} imports {extra}; datamodules may import {DATAMODULE_IMPORTS}"


def test_nothing_imports_the_cli():
    importers = sorted(n for n, edges in GRAPH.items() if "lightning_mtl.cli.main" in edges)
    assert importers == [], f"the CLI entry is imported by {importers}"


#: what a test may import of the test folder: the shared helpers, nothing else
TEST_SUPPORT = ("tests.helpers",)


def _test_imports(path: Path) -> set[str]:
    """The `tests.*` modules a file under tests/ imports (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tests")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["tests", *([base] if base else [])])
            if base == "tests":  # `from tests import helpers`
                found.update(f"tests.{a.name}" for a in node.names)
            elif base.split(".")[0] == "tests":
                found.add(base)
    return found


def test_no_test_imports_another_test_module():
    offenders = {
        path.name: sorted(m for m in _test_imports(path) if m not in TEST_SUPPORT)
        for path in sorted((ROOT / "tests").rglob("*.py"))
    }
    offenders = {name: mods for name, mods in offenders.items() if mods}
    assert not offenders, (
        f"test files import test modules (only {TEST_SUPPORT} is shared): {offenders}"
    )
