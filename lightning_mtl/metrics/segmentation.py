"""Segmentation metrics that torchmetrics does not provide."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_mtl.metrics.base import MeanOfValues
from lightning_mtl.targets import IGNORE_INDEX


class PerImageMicroIoU(MeanOfValues):
    """The "Less is More" paper's IoU: per-image micro IoU, averaged over images.

    For one image, ΣTP / Σ(TP+FP+FN) summed over classes and that image's labelled pixels,
    which equals correct / (correct + 2·wrong). Images without a labelled pixel are skipped.
    Differs from mIoU (per-class IoU of the split's confusion matrix, averaged over classes);
    both are reported so paper tables can be compared.

    `preds` are labels [N,H,W] or logits [N,C,H,W]; `target` is [N,H,W], `ignore_index`
    (the batch contract's `IGNORE_INDEX` by default) marking unlabelled pixels. An image whose
    logits hold a NaN/inf scores NaN (its argmax would be a finite, arbitrary label).
    """

    higher_is_better = True

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index

    def values(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        finite = None
        if preds.dim() == target.dim() + 1:
            finite = preds.isfinite().flatten(1).all(1)
            preds = preds.argmax(1)
        labelled = (target != self.ignore_index).flatten(1)
        correct = ((preds == target).flatten(1) & labelled).sum(1)
        wrong = labelled.sum(1) - correct
        iou = correct / (correct + 2 * wrong)
        if finite is not None:
            iou = torch.where(finite, iou, math.nan)
        return iou, labelled.any(1)
