"""Binary image classification (e.g. a CelebA attribute): BCE-with-logits, accuracy and F1."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score

from lightning_mtl.tasks.base import Task, loss_precision, register_task


@register_task("binary")
class BinaryClassificationTask(Task):
    """One image-level yes/no label; target float [N] in {0,1}; the head emits logits [N].

    Loss: BCE-with-logits on the raw logits. Metrics at 0.5 on sigmoid(logit): `acc`, `f1`.
    """

    head = "classification"
    higher_is_better: ClassVar[dict[str, bool]] = {"acc": True, "f1": True}
    main_metric: ClassVar[str] = "acc"

    @property
    def out_channels(self) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(loss_precision(pred), target)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score()})

    def metric_input(self, pred: Tensor) -> Tensor:
        return pred.sigmoid()

    def visualize(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Solid 32×32 patches from red (0) to green (1): predicted probability and label."""

        def patch(p: Tensor) -> Tensor:
            p = p.detach().float().cpu().reshape(())
            return torch.stack([1 - p, p, torch.zeros(())])[:, None, None].expand(3, 32, 32)

        return patch(pred.sigmoid()), patch(target)
