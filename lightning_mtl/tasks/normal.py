"""Surface-normal regression: 1 − cosine loss, cosine similarity and angular-error metrics."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection

from lightning_mtl.metrics import (
    NormalCosineSimilarity,
    NormalMeanAngle,
    NormalMedianAngle,
    NormalWithinAngle,
    check_same_shape,
)
from lightning_mtl.targets import target_kind
from lightning_mtl.tasks.base import Task, loss_precision, masked_mean, register_task

#: the valid pixels of a target (normal not all-zero), by the target-kind table
_valid = target_kind("normal").valid


@register_task("normal")
class NormalTask(Task):
    """Per-pixel unit normals; target float [N,3,H,W], all-zero = invalid; head emits 3 channels.

    Loss: mean over valid pixels of 1 − cos between the L2-normalised prediction and the target.
    Metrics (valid pixels of the whole split): `cos_sim` (the paper's "CS"), `mean_angle` and
    `median_angle` in degrees (median from a 0.01° histogram), `pct_11_25` / `pct_22_5` /
    `pct_30`: % of pixels with an angular error below 11.25° / 22.5° / 30°.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {
        "cos_sim": True,
        "mean_angle": False,
        "median_angle": False,
        "pct_11_25": True,
        "pct_22_5": True,
        "pct_30": True,
    }
    main_metric: ClassVar[str] = "cos_sim"

    def __init__(self, key: str = "normal", *, target_key: str | None = None) -> None:
        super().__init__(key, target_key)

    @property
    def out_channels(self) -> int:
        return 3

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        check_same_shape(pred, target)
        cos = (F.normalize(loss_precision(pred), dim=1) * target).sum(1)
        return masked_mean(1 - cos, _valid(target))

    def build_metrics(self) -> MetricCollection:
        # compute_groups=False: see MeanOfValues (equal first-batch states must not merge)
        return MetricCollection(
            {
                "cos_sim": NormalCosineSimilarity(),
                "mean_angle": NormalMeanAngle(),
                "median_angle": NormalMedianAngle(),
                "pct_11_25": NormalWithinAngle(11.25),
                "pct_22_5": NormalWithinAngle(22.5),
                "pct_30": NormalWithinAngle(30.0),
            },
            compute_groups=False,
        )

    def metric_input(self, pred: Tensor) -> Tensor:
        return F.normalize(pred, dim=1)

    def visualize(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(n + 1) / 2 as RGB; invalid target pixels black."""
        pred, target = pred.detach().float().cpu(), target.detach().float().cpu()
        valid = _valid(target)
        return (F.normalize(pred, dim=0) + 1) / 2, ((target + 1) / 2) * valid
