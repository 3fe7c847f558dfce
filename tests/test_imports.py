"""What an import loads: the lower layers run without Lightning, package re-exports are lazy.

Each import runs in a fresh interpreter, since this test process has long loaded everything.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the packages whose re-exports are imported on first use (`lightning_mtl._lazy`)
LAZY_PACKAGES = ("lightning_mtl", "lightning_mtl.meta")
#: what the contract, the registry and run names must not load: Lightning and the training code
TRAINING = ("lightning", "lightning_mtl.meta", "lightning_mtl.modules")


def _modules_loaded_by(statement: str) -> set[str]:
    """`sys.modules` of a fresh interpreter after `statement`."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize(
    "module", ["lightning_mtl.targets", "lightning_mtl.registry", "lightning_mtl.runs"]
)
def test_the_contract_and_run_names_do_not_load_training(module):
    loaded = _loaded(_modules_loaded_by(f"import {module}"), TRAINING)
    assert not loaded, f"import {module} loads {loaded}"


def test_the_meta_inner_loop_runs_without_lightning():
    modules = _modules_loaded_by("import lightning_mtl.meta.inner_loop")
    loaded = _loaded(modules, ("lightning", "lightning_mtl.meta.module", "lightning_mtl.modules"))
    assert not loaded, f"import lightning_mtl.meta.inner_loop loads {loaded}"


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_imports(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        exec(f"from {package} import {name}", {})
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name


def _type_checking_imports(package: str) -> dict[str, str]:
    """Name → module of the imports under `if TYPE_CHECKING:` in `package`'s `__init__`."""
    path = ROOT.joinpath(*package.split("."), "__init__.py")
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                found.update({alias.name: statement.module for alias in statement.names})
    return found


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_type_checkers_see_the_public_names_as_they_run(package):
    """The `TYPE_CHECKING` imports name every public name and the object it is at run time."""
    module = importlib.import_module(package)
    static = _type_checking_imports(package)
    assert sorted(static) == sorted(module.__all__)
    for name, source in static.items():
        assert getattr(module, name) is getattr(importlib.import_module(source), name), name


def test_an_export_keeps_its_name_when_its_namesake_submodule_is_imported_first(tmp_path):
    """`lightning_mtl.meta.meta_test` is the function, as with an eager re-export, even where a
    job imports the module `lightning_mtl.meta.meta_test` before anyone uses the name."""
    package = tmp_path / "lazy_package"
    package.mkdir()
    (package / "job.py").write_text("def job():\n    pass\n")
    (package / "__init__.py").write_text(
        "from lightning_mtl._lazy import lazy_exports\n"
        "__getattr__, __dir__ = lazy_exports(__name__, {'lazy_package.job': ['job']})\n"
    )
    code = """
import inspect
import lazy_package.job
from lazy_package import job
assert inspect.isfunction(job), job
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    assert inspect.isfunction(importlib.import_module("lightning_mtl.meta").meta_test)
