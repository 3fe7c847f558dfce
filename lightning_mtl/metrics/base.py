"""A building block for metrics that average per-element values over a whole split."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor
from torchmetrics import Metric


def check_same_shape(preds: Tensor, target: Tensor) -> None:
    """Raise when `preds` and `target` differ in shape (instead of silently broadcasting)."""
    if preds.shape != target.shape:
        raise ValueError(
            f"prediction and target shapes differ: {tuple(preds.shape)} vs {tuple(target.shape)}"
        )


class MeanOfValues(Metric):
    """Mean of per-element values over every valid element seen, across batches and ranks.

    Subclasses implement `values(preds, target)`, returning per-element values and a mask of
    the elements that count (values under a False mask are ignored, even NaN). The state is a
    sum and an exact integer count, both sum-reduced, so the result is the split-global mean.
    An empty split gives NaN.

    Put several `MeanOfValues` metrics in one `MetricCollection` with `compute_groups=False`:
    torchmetrics would otherwise merge metrics whose states happen to be equal after the first
    update (e.g. two errors that are both 0 on a perfect first batch) and stop updating one.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    @abstractmethod
    def values(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-element values and a same-shaped boolean mask of the elements that count."""

    def update(self, preds: Tensor, target: Tensor) -> None:
        values, valid = self.values(preds, target)
        self.total += torch.where(valid, values.to(self.total.dtype), 0).sum()
        self.count += valid.sum()

    def compute(self) -> Tensor:
        return self.total / self.count


class BatchWeightedMean(Metric):
    """Σ value·size / Σ size over the batches of every rank (sum-reduced states); NaN stays NaN.

    Not torchmetrics' `MeanMetric`: it drops NaN by default, and with `nan_strategy="disable"`
    it ignores the weights (torchmetrics 1.9).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("size", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, value: Tensor, size: int) -> None:
        self.total += value.detach().float() * size
        self.size += size

    def compute(self) -> Tensor:
        return self.total / self.size
