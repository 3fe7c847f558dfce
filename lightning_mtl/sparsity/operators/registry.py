"""The registry of prox operators: one per sparsity penalty, chosen by the `penalty` option."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor

from lightning_mtl.registry import Registry
from lightning_mtl.sparsity.groups import GroupBy

__all__ = ["PROX_OPERATORS", "ProxOperator", "list_prox_operators", "register_prox_operator"]


class ProxOperator(Protocol):
    """`operator(z, d, step_size, group_by, group_size=None) -> W`: the prox of
    `step_size`·penalty at `z` (the point the gradient step reached) for one 4-D weight, in the
    metric diag(d) — Adam's √v̂ + ε — or the euclidean one when `d` is None. It may work in place
    on `z` and `d` and return `z`.

    `group_size` is the p_g a group's penalty weight uses where the param group sets
    `group_sizes`: the original layer's group size for a layer narrowed by train-time
    compaction. None means the weight's own group size. `ProxAdamW` passes it as a keyword,
    and only when it is set; a penalty without group weights ignores it.
    """

    def __call__(
        self,
        z: Tensor,
        d: Tensor | None,
        step_size: float,
        group_by: GroupBy,
        group_size: int | None = None,
    ) -> Tensor: ...


#: prox operators by penalty name
PROX_OPERATORS: Registry[ProxOperator] = Registry("penalty")


def register_prox_operator(name: str) -> Callable[[ProxOperator], ProxOperator]:
    """Function decorator: make a prox operator selectable as `penalty=name`."""
    return PROX_OPERATORS.register(name)


def list_prox_operators() -> list[str]:
    """The registered penalties (prox operators)."""
    return PROX_OPERATORS.names()
