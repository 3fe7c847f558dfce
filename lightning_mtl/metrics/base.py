"""Building blocks: metrics that average per-element values over a whole split, a weighted mean
of batch values, and the wrapper that makes a metric NaN once it was fed a non-finite batch."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection


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


class NaNIfNonFinite(Metric):
    """`metric`, but NaN for a split in which any rank marked it (`mark_non_finite`).

    The modules mark every metric of a task whose raw prediction held a NaN/inf (which e.g. an
    argmax or a threshold would turn into finite, arbitrary labels): the split's value of each
    is then NaN, never a finite, too-good number. Updates are passed on unchanged, so finite
    splits give exactly the wrapped metric's value.
    """

    full_state_update = False

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self.metric = metric
        self.add_state("non_finite", torch.tensor(0), dist_reduce_fx="sum")

    def mark_non_finite(self, flag: Tensor | bool = True) -> None:
        """Make this split's value NaN if `flag` (a bool tensor on the metric's device is added
        as it is, without a host read)."""
        self.non_finite += flag

    def update(self, *args: Tensor, **kwargs: Tensor) -> None:
        self.metric.update(*args, **kwargs)

    def compute(self) -> Tensor:
        value = self.metric.compute()
        return torch.where(self.non_finite > 0, torch.nan, value)

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


def nan_if_non_finite(metrics: MetricCollection) -> MetricCollection:
    """`metrics` with each metric wrapped in `NaNIfNonFinite`, without compute groups (the
    wrappers' own states are alike, so torchmetrics would merge them and update only one)."""
    return MetricCollection(
        {name: NaNIfNonFinite(metric) for name, metric in metrics.items(keep_base=True)},
        compute_groups=False,
    )
