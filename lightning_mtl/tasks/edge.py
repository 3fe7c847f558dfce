"""Edge detection as pixel-level binary classification: balanced BCE, F1 and ODS F1."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score

from lightning_mtl.metrics import ODSF1Score
from lightning_mtl.tasks.base import Task, loss_precision, register_task


@register_task("edge")
class EdgeTask(Task):
    """Per-pixel edge logits; target float [N,1,H,W] in {0,1}.

    Loss: BCE-with-logits averaged over all pixels with edge pixels weighted `pos_weight` and
    the others `1 − pos_weight` (Vandenhende et al.'s balanced BCE; 0.95 by default). Metrics:
    `f1` at threshold 0.5 on sigmoid, `ods_f1` the best F1 over `ods_thresholds` evenly spaced
    thresholds — pixel-exact, without the BSDS boundary-matching tolerance.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"f1": True, "ods_f1": True}
    main_metric: ClassVar[str] = "ods_f1"

    def __init__(
        self,
        key: str = "edge",
        *,
        pos_weight: float = 0.95,
        ods_thresholds: int = 101,
        target_key: str | None = None,
    ) -> None:
        super().__init__(key, target_key)
        if not 0 < pos_weight < 1:
            raise ValueError(f"pos_weight must be in (0, 1), got {pos_weight!r}")
        if not isinstance(ods_thresholds, int) or ods_thresholds < 2:
            raise ValueError(f"ods_thresholds must be an int >= 2, got {ods_thresholds!r}")
        self.pos_weight = pos_weight
        self.ods_thresholds = ods_thresholds

    @property
    def out_channels(self) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        weight = torch.where(target >= 0.5, self.pos_weight, 1 - self.pos_weight)
        return F.binary_cross_entropy_with_logits(loss_precision(pred), target, weight=weight)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection(
            {"f1": BinaryF1Score(), "ods_f1": ODSF1Score(thresholds=self.ods_thresholds)}
        )

    def metric_input(self, pred: Tensor) -> Tensor:
        return pred.sigmoid()

    def visualize(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Edge probability and target as grey images."""
        pred, target = pred.detach().float().cpu(), target.detach().float().cpu()
        return pred.sigmoid().expand(3, -1, -1), target.expand(3, -1, -1)
