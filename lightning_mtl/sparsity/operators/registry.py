"""The registry of prox operators: one per sparsity penalty, chosen by the `penalty` option."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from lightning_mtl.registry import Registry

__all__ = ["PROX_OPERATORS", "ProxOperator", "list_prox_operators", "register_prox_operator"]

#: `operator(z, d, step_size, group_by) -> W`: the prox of `step_size`·penalty at `z` (the point
#: the gradient step reached) for one 4-D weight, in the metric diag(d) — Adam's √v̂ + ε — or the
#: euclidean one when `d` is None. It may work in place on `z` and `d` and return `z`.
ProxOperator = Callable[[Tensor, Tensor | None, float, str], Tensor]

#: prox operators by penalty name
PROX_OPERATORS: Registry[ProxOperator] = Registry("penalty")


def register_prox_operator(name: str) -> Callable[[ProxOperator], ProxOperator]:
    """Function decorator: make a prox operator selectable as `penalty=name`."""
    return PROX_OPERATORS.register(name)


def list_prox_operators() -> list[str]:
    """The registered penalties (prox operators)."""
    return PROX_OPERATORS.names()
