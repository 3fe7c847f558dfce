"""Loss weightings by name; add one with `register_weighting`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lightning_mtl.weighting.base import LossWeighting
from lightning_mtl.weighting.equal import EqualWeighting
from lightning_mtl.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "WEIGHTINGS",
    "EqualWeighting",
    "LossWeighting",
    "UncertaintyWeighting",
    "build_weighting",
    "register_weighting",
]

WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "equal": EqualWeighting,
    "uncertainty": UncertaintyWeighting,
}


def register_weighting(
    name: str,
) -> Callable[[type[LossWeighting]], type[LossWeighting]]:
    """Class decorator: make a `LossWeighting` subclass buildable under `name`."""

    def decorator(cls: type[LossWeighting]) -> type[LossWeighting]:
        if name in WEIGHTINGS and WEIGHTINGS[name] is not cls:
            raise ValueError(f"weighting {name!r} is already registered to {WEIGHTINGS[name]}")
        WEIGHTINGS[name] = cls
        return cls

    return decorator


def build_weighting(name: str, task_keys: Sequence[str]) -> LossWeighting:
    """The weighting registered under `name` for these tasks."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](task_keys)
