"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_mtl.weighting.base import LossWeighting

__all__ = ["UncertaintyWeighting"]


class UncertaintyWeighting(LossWeighting):
    """Total = Σ_t exp(−s_t)·L_t + s_t with learnable s_t = log σ_t² (`log_vars`, init 0).

    The effective weight of task t is exp(−s_t); the `+ s_t` term keeps σ_t from growing
    without bound. `log_vars` must be in the optimizer for the weights to change.
    """

    def __init__(self, task_keys: Sequence[str]) -> None:
        super().__init__(task_keys)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_keys)))

    def combine(self, losses: Tensor) -> Tensor:
        return (torch.exp(-self.log_vars) * losses + self.log_vars).sum()

    def weight_vector(self) -> Tensor:
        return torch.exp(-self.log_vars)
