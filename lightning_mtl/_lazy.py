"""Package re-exports imported on first use (PEP 562 `__getattr__` and `__dir__`).

Importing any module of a package runs the package's `__init__.py` first: with eager re-exports,
`import lightning_mtl.targets` (the batch contract, the only part the datamodules may use) would
load Lightning and the meta-learning pipeline. A package `__init__` that re-exports names from
higher layers passes them to `lazy_exports` by module instead, and each is imported when used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose names `exports[module]` are imported
    from `module` on first use and then kept in the package.

    In a package's `__init__.py`:
    `__getattr__, __dir__ = lazy_exports(__name__, {"lightning_mtl.models": ["MultiTaskModel"]})`.
    """
    sources = {name: module for module, names in exports.items() for name in names}
    package_module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name]), name)
        setattr(package_module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(package_module), *sources})

    named_like_their_module = {n for n, module in sources.items() if module == f"{package}.{n}"}
    if named_like_their_module:
        package_module.__class__ = _keep_exports_over_submodules(named_like_their_module)
    return __getattr__, __dir__


def _keep_exports_over_submodules(names: set[str]) -> type[ModuleType]:
    """A module type whose attributes `names` are not replaced by submodules of those names.

    The import system binds a submodule to its name in the package when it first imports it;
    an eager `from .meta_test import meta_test` then rebound the name to the function. Lazily, a
    submodule imported before its namesake export is used would otherwise keep the name.
    """

    class PackageWithExportsOverSubmodules(ModuleType):
        def __setattr__(self, name: str, value: object) -> None:
            if name not in names or not isinstance(value, ModuleType):
                super().__setattr__(name, value)

    return PackageWithExportsOverSubmodules
