"""The L1 prox (λ‖W‖₁): the unstructured baseline of the papers' Table 3."""

from __future__ import annotations

from torch import Tensor

from lightning_mtl.sparsity.groups import GroupBy
from lightning_mtl.sparsity.operators.registry import register_prox_operator


def soft_threshold(z: Tensor, threshold: Tensor | float) -> Tensor:
    """Elementwise sign(Z)·max(0, |Z| − t)."""
    return z.sign() * (z.abs() - threshold).clamp_min(0)


@register_prox_operator("l1")
def l1(
    z: Tensor, d: Tensor | None, step_size: float, group_by: GroupBy, group_size: int | None = None
) -> Tensor:
    """Soft-threshold each element by step_size (euclidean) or step_size / d_i (metric diag(d));
    the grouping (`group_by`, `group_size`) does not enter."""
    return soft_threshold(z, step_size if d is None else step_size / d)
