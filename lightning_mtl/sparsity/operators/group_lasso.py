"""The group-lasso prox (λ Σ_g √p_g ‖W_g‖), in the euclidean or in Adam's diagonal metric.

The functions map the point `z` reached by the gradient step to the penalised point, for all
groups of the tensor at once (no per-group Python loop, no host synchronisation). They are plain
tensor expressions, so `group_lasso_euclidean` is differentiable almost everywhere, which the
meta-sparsity inner loop relies on. A NaN in `z` stays NaN; it never becomes a zero group.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_mtl.sparsity.groups import GroupBy, group_sum
from lightning_mtl.sparsity.groups import group_size as _group_size
from lightning_mtl.sparsity.operators.registry import register_prox_operator

#: Newton steps of the adaptive prox on accelerators, where checking convergence would
#: synchronise: enough for float32 precision when Adam's metric spans ~3 decades in a group.
ADAPTIVE_NEWTON_STEPS = 4
#: On CPU the solver instead stops after the first step smaller than √eps·θ for every group:
#: convergence is quadratic, so the error left is about eps·θ (reading a CPU scalar costs no
#: synchronisation). At most this many steps.
MAX_NEWTON_STEPS = 16


def group_lasso_euclidean(z: Tensor, threshold: Tensor | float, group_by: str) -> Tensor:
    """W_g = Z_g · max(0, 1 − t/‖Z_g‖), with t = step·λ·√p_g.

    Differentiable in z and t; an exactly-zero group has gradient 0, not the 0·∞ = NaN of a
    plain square root at 0, so a meta-gradient through dead groups stays finite.
    """
    q = group_sum(z.square(), group_by)
    live = q != 0  # NaN counts as live, so a NaN spreads over its whole group
    norm = torch.where(live, q, torch.ones_like(q)).sqrt()
    scale = torch.where(live, (1 - threshold / norm).clamp_min(0), torch.zeros_like(q))
    return z * scale


def group_lasso_adaptive(
    z: Tensor,
    d: Tensor,
    threshold: Tensor | float,
    group_by: str,
    newton_steps: int | None = None,
) -> Tensor:
    """Group-lasso prox in the diagonal metric D = diag(d) (Deleu & Bengio 2021).

    Solves min_W (1/2)‖W − Z‖²_D + t‖W‖ for every group, t = step·λ·√p_g. The group is zero iff
    ‖D Z‖ ≤ t; otherwise W_i = Z_i·θ/(θ + c_i) with c_i = t/d_i and θ = ‖W‖ > 0 the root of
    Σ Z_i²/(θ + c_i)² = 1. See `group_lasso_adaptive_` for the solver.
    """
    return group_lasso_adaptive_(z.clone(), d.clone(), threshold, group_by, newton_steps)


def group_lasso_adaptive_(
    z: Tensor,
    d: Tensor,
    threshold: Tensor | float,
    group_by: str,
    newton_steps: int | None = None,
) -> Tensor:
    """In place: z ← the adaptive prox of z, returned (d is used as scratch).

    `newton_steps=None` iterates to float precision on CPU and takes `ADAPTIVE_NEWTON_STEPS`
    elsewhere; an int fixes the count.

    Newton runs on h(θ) = (Σ Z_i²/(θ + c_i)²)^(−1/2), concave and increasing in θ (a weighted
    power mean of θ + c_i), from θ₀ = max(0, ‖Z‖ − Σ Z_i²c_i/‖Z‖²), a lower bound of the root
    (the arithmetic mean bounds that power mean). Tangents of a concave function lie above it,
    so every iterate stays left of the root and converges to it quadratically; one step is exact
    when all c_i are equal. A zero group has h(0) ≥ 1, so θ₀ = 0 and every step is ≤ 0: the
    group comes out exactly zero without a separate test. (A warm start from the previous
    step's θ was tried: it lands right of the root while groups shrink fast, and converges
    worse.)
    """
    q = z.square()
    c = d.reciprocal_().mul_(threshold)
    r = torch.empty_like(z)  # 1/(θ + c): one division per step, the rest multiplies
    u = torch.empty_like(z)
    q_sum = group_sum(q, group_by)
    mean_c = group_sum(torch.mul(q, c, out=u), group_by) / q_sum.clamp_min(1e-38)
    theta = (q_sum.sqrt() - mean_c).clamp_min(0)
    until_converged = newton_steps is None and z.device.type == "cpu"
    if newton_steps is None:
        newton_steps = MAX_NEWTON_STEPS if until_converged else ADAPTIVE_NEWTON_STEPS
    tolerance = torch.finfo(z.dtype).eps ** 0.5
    for _ in range(newton_steps):
        torch.add(c, theta, out=r).reciprocal_()
        s = group_sum(torch.mul(q, r, out=u).mul_(r), group_by)  # S(θ) = Σ q/(θ+c)²
        t3 = group_sum(u.mul_(r), group_by)  # Σ q/(θ+c)³ = −S'(θ)/2
        # h(θ) = S^(−1/2), h'(θ) = S^(−3/2)·Σ q/(θ+c)³: θ ← θ + (1 − h)/h'
        previous, theta = theta, (theta + (s * s.sqrt() - s) / t3.clamp_min(1e-38)).clamp_min(0)
        if until_converged and bool(((theta - previous).abs() <= tolerance * theta).all()):
            break
    return z.mul_(torch.add(c, theta, out=r).reciprocal_().mul_(theta))


@register_prox_operator("group_lasso")
def group_lasso(
    z: Tensor, d: Tensor | None, step_size: float, group_by: GroupBy, group_size: int | None = None
) -> Tensor:
    """The prox of step_size·Σ_g √p_g ‖W_g‖ at `z`, euclidean (`d=None`) or in the metric
    diag(d); may work in place on `z` and `d`. p_g is `z`'s group size unless `group_size` is
    given (a layer compacted in training keeps its original groups' weight)."""
    size = _group_size(z, group_by) if group_size is None else group_size
    threshold = step_size * math.sqrt(size)
    if d is None:
        return group_lasso_euclidean(z, threshold, group_by)
    return group_lasso_adaptive_(z, d, threshold, group_by)
