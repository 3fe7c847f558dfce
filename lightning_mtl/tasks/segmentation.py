"""Semantic segmentation: class logits per pixel, cross-entropy, mIoU, pixel accuracy, paper IoU."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_mtl.metrics import PerImageMicroIoU
from lightning_mtl.targets import IGNORE_INDEX, TargetSpec, target_kind
from lightning_mtl.tasks.base import Task, loss_precision, masked_mean, register_task

#: the labelled pixels of a target (not `IGNORE_INDEX`), by the target-kind table
_labelled = target_kind("seg").valid


def label_palette(num_classes: int) -> Tensor:
    """Fixed, distinct RGB colours [num_classes,3] in [0,1]; none is black (black = ignore).

    The PASCAL VOC bit-interleaving palette, shifted by one so class 0 is not black.
    """
    ids = torch.arange(1, num_classes + 1)
    rgb = torch.zeros(num_classes, 3)
    for bit in range(8):
        for channel in range(3):
            rgb[:, channel] += ((ids >> (3 * bit + channel)) & 1) * (128 >> bit)
    return rgb / 255


@register_task("seg")
class SegmentationTask(Task):
    """Semantic segmentation into `num_classes` classes; target int64 [N,H,W], 255 = ignore.

    Metrics: `miou` (macro IoU of the split's confusion matrix; classes absent from both
    prediction and target are left out), `pixel_acc` (accuracy over labelled pixels) and `iou`
    (the "Less is More" paper's per-image micro IoU, see `PerImageMicroIoU`).
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"miou": True, "pixel_acc": True, "iou": True}
    main_metric: ClassVar[str] = "iou"

    def __init__(
        self, key: str = "seg", *, num_classes: int = 13, target_key: str | None = None
    ) -> None:
        super().__init__(key, target_key)
        if not isinstance(num_classes, int) or not 2 <= num_classes <= IGNORE_INDEX:
            raise ValueError(
                f"num_classes must be an int in [2, {IGNORE_INDEX}] ({IGNORE_INDEX} is the ignore "
                f"label), got {num_classes!r}"
            )
        self.num_classes = num_classes
        self._colours = torch.cat([label_palette(num_classes), torch.zeros(1, 3)])

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        ce = F.cross_entropy(
            loss_precision(pred), target, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return masked_mean(ce, _labelled(target))

    def build_metrics(self) -> MetricCollection:
        n, ignore = self.num_classes, IGNORE_INDEX
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(n, average="macro", ignore_index=ignore),
                "pixel_acc": MulticlassAccuracy(n, average="micro", ignore_index=ignore),
                "iou": PerImageMicroIoU(ignore_index=ignore),
            }
        )

    def metric_input(self, pred: Tensor) -> Tensor:
        return pred.argmax(1)

    def visualize(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        labels = pred.detach().argmax(0).cpu()
        target = target.detach().cpu()
        target = torch.where(_labelled(target), target, self.num_classes)
        return self._colours[labels].permute(2, 0, 1), self._colours[target].permute(2, 0, 1)

    @classmethod
    def from_target(cls, key: str, spec: TargetSpec) -> SegmentationTask:
        return cls(key=key, num_classes=spec.num_classes)
