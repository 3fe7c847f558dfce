"""The meta-sparsity inner loop: K differentiable proximal-gradient steps on one meta-task.

Functional (parameters are a name → tensor dict, the model is called through
`torch.func.functional_call` by the caller's `loss_fn`), so gradients of the adapted parameters
flow back to the initial parameters and to λ without copying the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor

from lightning_mtl.registry import check_choice
from lightning_mtl.sparsity.groups import group_size, group_sum
from lightning_mtl.sparsity.operators import group_lasso_euclidean

#: How an inner step treats λΩ: its prox after the gradient step, or its gradient added to it.
InnerSparsity = Literal["prox", "penalty"]

Params = dict[str, Tensor]


def group_lasso(weight: Tensor, group_by: str) -> Tensor:
    """Ω(W) = Σ_g √p_g ‖W_g‖ of one weight (differentiable; gradient 0 on zero groups)."""
    q = group_sum(weight.square(), group_by)
    live = q != 0
    norm = torch.where(live, q, torch.ones_like(q)).sqrt()
    return (
        math.sqrt(group_size(weight, group_by)) * torch.where(live, norm, torch.zeros_like(q)).sum()
    )


def group_lasso_grad(weight: Tensor, lam: Tensor | float, group_by: str) -> Tensor:
    """∇_W λΩ(W) = λ √p_g W_g / ‖W_g‖, and 0 on zero groups (the minimal-norm subgradient)."""
    q = group_sum(weight.square(), group_by)
    live = q != 0
    inv_norm = torch.where(live, q, torch.ones_like(q)).rsqrt()
    scale = torch.where(live, inv_norm, torch.zeros_like(q))
    return lam * math.sqrt(group_size(weight, group_by)) * weight * scale


def adapt(
    loss_fn: Callable[[Params], Tensor],
    params: Params,
    lambdas: Mapping[str, Tensor],
    steps: int,
    lr: float,
    sparsity: InnerSparsity = "prox",
    first_order: bool = False,
    group_by: str = "in_channel",
) -> tuple[Params, list[Tensor]]:
    """φ_K after K inner steps from φ_0 = `params`, and the K support losses (detached).

    Each step is φ ← S_{αλ}(φ − α∇L(φ)) for the weights named in `lambdas` (the group-lasso prox
    with threshold α·λ·√p_g, `sparsity="prox"`) or φ ← φ − α(∇L(φ) + ∇λΩ(φ))
    (`sparsity="penalty"`); the other parameters take the plain gradient step. Second order by
    default (the graph of every inner gradient is kept). `first_order=True` detaches the loss
    gradients, dropping the Hessian terms, but keeps λ's path through the prox threshold or the
    penalty gradient, which is all the signal λ gets.
    """
    check_choice("sparsity", sparsity, InnerSparsity)
    phi = dict(params)
    losses: list[Tensor] = []
    for _ in range(steps):
        loss = loss_fn(phi)
        grads = torch.autograd.grad(
            loss, list(phi.values()), create_graph=not first_order, allow_unused=True
        )
        adapted: Params = {}
        for (name, weight), grad in zip(phi.items(), grads, strict=True):
            step = torch.zeros_like(weight) if grad is None else grad
            lam = lambdas.get(name)
            if lam is not None and sparsity == "penalty":
                at = weight.detach() if first_order else weight
                step = step + group_lasso_grad(at, lam, group_by)
            z = weight - lr * step
            if lam is not None and sparsity == "prox":
                threshold = lr * lam * math.sqrt(group_size(z, group_by))
                z = group_lasso_euclidean(z, threshold, group_by)
            adapted[name] = z
        phi = adapted
        losses.append(loss.detach())
    return phi, losses
