"""Surface-normal metrics over valid pixels (target not all-zero), accumulated over a split.

Custom because torchmetrics has no angular-error metrics and no validity mask. Predictions need
not be unit length (they are L2-normalised here); a zero prediction counts as 90° off. A NaN
prediction at a valid pixel makes every metric of the split NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lightning_mtl.metrics.base import MeanOfValues, check_same_shape


def normal_errors(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine similarity, angle in degrees and validity mask per pixel of [N,3,H,W] normals.

    The angle uses 2·atan2(‖p−g‖, ‖p+g‖), accurate near 0° where acos(cos) is not.
    """
    check_same_shape(preds, target)
    p = F.normalize(preds.float(), dim=1)
    g = F.normalize(target.float(), dim=1)
    cos = (p * g).sum(1)
    angle = torch.rad2deg(2 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))
    return cos, angle, (target != 0).any(1)


class NormalCosineSimilarity(MeanOfValues):
    """Mean cosine similarity between predicted and true normals (the paper's "CS")."""

    higher_is_better = True

    def values(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        cos, _, valid = normal_errors(preds, target)
        return cos, valid


class NormalMeanAngle(MeanOfValues):
    """Mean angular error in degrees."""

    higher_is_better = False

    def values(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        _, angle, valid = normal_errors(preds, target)
        return angle, valid


class NormalWithinAngle(MeanOfValues):
    """Percentage (0–100) of valid pixels whose angular error is below `threshold` degrees."""

    higher_is_better = True

    def __init__(self, threshold: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def values(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        _, angle, valid = normal_errors(preds, target)
        return torch.where(angle.isnan(), math.nan, 100.0 * (angle < self.threshold)), valid


class NormalMedianAngle(Metric):
    """Median angular error in degrees over every valid pixel of a split.

    Keeps a histogram of `bins` equal bins over [0°, 180°] (default 18000: 0.01° bins) summed
    across ranks, so memory is constant and DDP-exact; the median is linearly interpolated
    inside its bin, hence within one bin width (0.01° by default) of the exact median. NaN
    angles are counted apart (not binned) and make the median NaN.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, bins: int = 18000, **kwargs) -> None:
        super().__init__(**kwargs)
        if bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        self.bins = bins
        self.add_state("hist", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("nan_count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        _, angle, valid = normal_errors(preds, target)
        angle = angle[valid]
        nan = angle.isnan()
        self.nan_count += nan.sum()
        idx = (angle[~nan] * (self.bins / 180.0)).long().clamp_(0, self.bins - 1)
        self.hist += torch.bincount(idx, minlength=self.bins)

    def compute(self) -> Tensor:
        total = self.hist.sum()
        if total == 0 or self.nan_count > 0:
            return torch.tensor(math.nan, device=self.hist.device)
        cdf = self.hist.cumsum(0)
        i = torch.searchsorted(2 * cdf, total)  # first bin holding half of the mass
        below = cdf[i] - self.hist[i]
        frac = (total / 2 - below) / self.hist[i]
        return (i + frac) * (180.0 / self.bins)
