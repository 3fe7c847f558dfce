"""`Registry`: the one way things are chosen by name (tasks, weightings, heads, backbones, prox
operators, dataset formats); `check_choice`: the one check of an option fixed by a `Literal`.

Each registry maps names to entries (classes, functions or objects), refuses to bind a taken
name to something else, and answers an unknown name with an error that lists the choices. An
option whose values are fixed (`prox_metric`, `group_by`, …) is typed with a `Literal`, which
states them once: for the type checker, the command-line parser and `check_choice` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Literal, TypeVar, get_args, get_origin

__all__ = ["Registry", "check_choice"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (`what` names the kind in errors: "task kind", "backbone", …).

    A read-only `Mapping` (`name in registry`, `registry[name]`, iteration in registration
    order) plus `register` (also as a decorator), `unregister`, `get` and `names`.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Bind `name` to `entry`; without `entry`, a decorator that registers what it wraps.

        Registering the same entry twice is harmless; binding a taken name to another entry is
        a `ValueError` (unregister it first to replace it deliberately).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            taken = self._entries.get(name)
            if taken is not None and taken is not item:
                raise ValueError(
                    f"{self.what} {name!r} is already registered to {_describe(taken)}"
                )
            self._entries[name] = item
            return item

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T:
        """Remove `name` and return its entry."""
        self._check(name)
        return self._entries.pop(name)

    def get(self, name: str) -> T:  # type: ignore[override]
        """The entry registered under `name`, or a `ValueError` listing the registered names."""
        self._check(name)
        return self._entries[name]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def _check(self, name: str) -> None:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {self.names()}")

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(f"unknown {self.what} {name!r}; choose one of {self.names()}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"


def _describe(entry: object) -> str:
    return getattr(entry, "__qualname__", None) or repr(entry)


def check_choice(name: str, value: object, choices: Any) -> None:
    """A `ValueError` naming option `name`, its `value` and the allowed values unless `value` is
    one of the `Literal` type `choices` (e.g. `check_choice("group_by", group_by, GroupBy)`).

    Python callers bypass the parser's check of a `Literal`-typed option; this one catches them.
    """
    if get_origin(choices) is not Literal:
        raise TypeError(f"the choices of {name} must be a Literal type, got {choices!r}")
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {list(allowed)}")
