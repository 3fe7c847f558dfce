"""Edge-detection metrics beyond torchmetrics' fixed-threshold F1."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.classification import BinaryPrecisionRecallCurve


class ODSF1Score(BinaryPrecisionRecallCurve):
    """Optimal-dataset-scale F-score: the best F1 over a fixed threshold sweep of a split.

    `thresholds` as in `BinaryPrecisionRecallCurve`: an int gives that many evenly spaced
    thresholds in [0, 1] and a constant-memory, sum-reduced confusion-matrix state.
    Pixel-exact: unlike the BSDS benchmark there is no boundary-matching distance tolerance, so
    values are lower than published ODS numbers. `preds` are probabilities; `target` is {0,1}
    (float targets are accepted). A NaN prediction makes the split's score NaN (the curve
    would count it as a negative).
    """

    higher_is_better = True

    def __init__(self, thresholds: int | list[float] | Tensor = 101, **kwargs) -> None:
        super().__init__(thresholds=thresholds, **kwargs)
        self.add_state("nan_count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.nan_count += preds.isnan().sum()
        super().update(preds, target.long())

    def compute(self) -> Tensor:
        precision, recall, _ = super().compute()
        best = torch.nan_to_num(2 * precision * recall / (precision + recall)).max()
        return torch.where(self.nan_count > 0, math.nan, best)
