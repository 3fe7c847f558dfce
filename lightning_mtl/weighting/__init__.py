"""Loss weightings by name; add one with `register_weighting`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lightning_mtl.registry import Registry
from lightning_mtl.weighting.base import LossWeighting
from lightning_mtl.weighting.equal import EqualWeighting
from lightning_mtl.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "WEIGHTINGS",
    "EqualWeighting",
    "LossWeighting",
    "UncertaintyWeighting",
    "build_weighting",
    "list_weightings",
    "register_weighting",
]

#: loss weightings by name
WEIGHTINGS: Registry[type[LossWeighting]] = Registry("loss weighting")
WEIGHTINGS.register("equal", EqualWeighting)
WEIGHTINGS.register("uncertainty", UncertaintyWeighting)


def register_weighting(name: str) -> Callable[[type[LossWeighting]], type[LossWeighting]]:
    """Class decorator: make a `LossWeighting` subclass buildable under `name`."""
    return WEIGHTINGS.register(name)


def list_weightings() -> list[str]:
    """The registered loss weightings."""
    return WEIGHTINGS.names()


def build_weighting(name: str, task_keys: Sequence[str]) -> LossWeighting:
    """The weighting registered under `name` for these tasks."""
    return WEIGHTINGS.get(name)(task_keys)
