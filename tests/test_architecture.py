"""The import structure of `lightning_mtl/` and `datamodules/`: no cycle, layers go one way.

Every import that can run counts, at module level or inside a function (a function-level import
hides a cycle, it does not remove it); imports under `if TYPE_CHECKING:` never run and do not.
Importing `a.b.c` from outside package `a.b` also runs `a/__init__` and `a/b/__init__`, so those
count as imported too. A package re-export imported on first use (`lightning_mtl._lazy`) is named
by a string in its `__init__`, not imported there: `from a import Name` counts as importing the
module `Name` comes from.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_mtl", "datamodules")

#: Layers, lowest first; a module may import its own layer or a lower one. The longest matching
#: prefix decides. A package `__init__` runs whenever any module of the package is imported, so
#: it takes the lowest layer of the modules inside it.
LAYERS: dict[str, int] = {
    "lightning_mtl._lazy": 0,
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


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), str(MODULES[name]))


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in {
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    }


def _import_statements(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under `node` that can run (not those under `if TYPE_CHECKING:`)."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    for child in ast.iter_child_nodes(node):
        for statement in child.orelse if _is_type_checking_block(child) else [child]:
            yield from _import_statements(statement)


def _lazy_exports(name: str) -> dict[str, str]:
    """Name → source module of what a package `__init__` re-exports on first use."""
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_exports":
            exports: dict[str, list[str]] = ast.literal_eval(node.args[1])
            return {n: module for module, names in exports.items() for n in names}
    return {}


LAZY_EXPORTS = {name: _lazy_exports(name) for name in MODULES if _is_package(name)}


def _imports_in(tree: ast.Module, package: str) -> set[str]:
    """Every in-project module the code `tree` of a module in `package` imports, anywhere in the
    file, lazy re-exports resolved to the modules they come from."""
    found: set[str] = set()
    for node in _import_statements(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names)
        lazy = LAZY_EXPORTS.get(base, {})
        found.update(lazy[alias.name] for alias in node.names if alias.name in lazy)
    return {m for m in found if m in MODULES}


def _imports(name: str) -> set[str]:
    return _imports_in(_tree(name), name if _is_package(name) else name.rpartition(".")[0])


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
    if _is_package(name):
        inside = [_layer(m) for m in MODULES if m.startswith(name + ".") and not _is_package(m)]
        return min((layer for layer in inside if layer is not None), default=None)
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
    missing = [n for n in MODULES if _layer(n) is None]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_every_layer_entry_names_a_module():
    stale = [p for p in LAYERS if not any(m == p or m.startswith(p + ".") for m in MODULES)]
    assert not stale, f"LAYERS entries that match no module: {stale}"


def _upward_imports(name: str) -> list[str]:
    own = _layer(name)
    return sorted(
        f"{t} ({LAYER_NAMES[_layer(t)]})"
        for t in _imports(name)
        if _layer(t) is not None and _layer(t) > own
    )


@pytest.mark.parametrize("name", list(MODULES))
def test_imports_go_down_the_layers(name):
    upward = _upward_imports(name)
    assert not upward, f"{name} ({LAYER_NAMES[_layer(name)]}) imports from higher layers: {upward}"


def test_package_inits_take_their_lowest_layer_and_lazy_exports_are_not_imports():
    assert _layer("lightning_mtl") == 0
    assert _layer("lightning_mtl.meta") == 1
    # the root names its LightningModules as strings, imported on first use: not imports
    assert "lightning_mtl.modules" in LAZY_EXPORTS["lightning_mtl"].values()
    assert _imports("lightning_mtl") == {"lightning_mtl._lazy"}
    # an importer of a lazily re-exported name imports the module the name comes from; an
    # import under `if TYPE_CHECKING:` never runs
    code = """
from lightning_mtl.meta import MetaSparsityModule
if TYPE_CHECKING:
    from lightning_mtl.modules import MultiTaskLightningModule
else:
    from lightning_mtl import runs
"""
    assert _imports_in(ast.parse(code), "lightning_mtl.tasks") == {
        "lightning_mtl",
        "lightning_mtl.meta",
        "lightning_mtl.meta.module",
        "lightning_mtl.runs",
    }


def test_the_lowest_layers_do_not_import_lightning():
    for name in MODULES:
        if _layer(name) not in (0, 1):
            continue
        for node in _import_statements(_tree(name)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [] if node.level else [node.module or ""]
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
