"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_mtl.weighting.base import LossWeighting

__all__ = ["EqualWeighting"]


class EqualWeighting(LossWeighting):
    """Total = Σ_t L_t; every weight is 1."""

    def __init__(self, task_keys: Sequence[str]) -> None:
        super().__init__(task_keys)
        # a buffer, so the logged weights sit on the module's device like learnable ones
        self.register_buffer("ones", torch.ones(len(self.task_keys)), persistent=False)

    def combine(self, losses: Tensor) -> Tensor:
        return losses.sum()

    def weight_vector(self) -> Tensor:
        return self.ones
