"""Prox operators, one file per penalty; `penalty=NAME` picks one by its registered name.

Add one: a file with a function `(z, d, step_size, group_by, group_size=None) -> Tensor`
decorated with `@register_prox_operator("name")` (see `registry.ProxOperator`), imported before
the optimizer is built. Built in: `group_lasso` (the papers') and `l1` (the unstructured baseline).
"""

from lightning_mtl.sparsity.operators.group_lasso import (
    group_lasso_adaptive,
    group_lasso_adaptive_,
    group_lasso_euclidean,
)
from lightning_mtl.sparsity.operators.l1 import soft_threshold
from lightning_mtl.sparsity.operators.registry import (
    PROX_OPERATORS,
    ProxOperator,
    list_prox_operators,
    register_prox_operator,
)

__all__ = [
    "PROX_OPERATORS",
    "ProxOperator",
    "group_lasso_adaptive",
    "group_lasso_adaptive_",
    "group_lasso_euclidean",
    "list_prox_operators",
    "register_prox_operator",
    "soft_threshold",
]
