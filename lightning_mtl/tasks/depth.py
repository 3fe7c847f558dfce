"""Depth regression in metres: masked MSE or L1, abs / rel error and RMSE over valid pixels."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor
from torchmetrics import MetricCollection

from lightning_mtl.metrics import DepthAbsError, DepthRelError, DepthRMSE, check_same_shape
from lightning_mtl.targets import target_kind
from lightning_mtl.tasks.base import Task, loss_precision, masked_mean, register_task

DepthLoss = Literal["mse", "l1"]
#: the valid entries of a target (depth > 0), by the target-kind table
_valid = target_kind("depth").valid


@register_task("depth")
class DepthTask(Task):
    """Per-pixel depth; target float [N,1,H,W] metres, 0 = invalid; head emits metres.

    `loss="mse"` (the paper's) or `"l1"`, both averaged over valid pixels only.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {
        "abs_err": False,
        "rel_err": False,
        "rmse": False,
    }
    main_metric: ClassVar[str] = "abs_err"
    losses: ClassVar[tuple[str, ...]] = ("mse", "l1")

    def __init__(
        self, key: str = "depth", *, loss: DepthLoss = "mse", target_key: str | None = None
    ) -> None:
        super().__init__(key, target_key)
        if loss not in self.losses:
            raise ValueError(f"DepthTask loss must be one of {self.losses}, got {loss!r}")
        self.loss_name = loss

    @property
    def out_channels(self) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        check_same_shape(pred, target)
        diff = loss_precision(pred) - target
        error = diff.square() if self.loss_name == "mse" else diff.abs()
        return masked_mean(error, _valid(target))

    def build_metrics(self) -> MetricCollection:
        # compute_groups=False: see MeanOfValues (equal first-batch states must not merge)
        return MetricCollection(
            {"abs_err": DepthAbsError(), "rel_err": DepthRelError(), "rmse": DepthRMSE()},
            compute_groups=False,
        )

    def visualize(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Grey images on the target's valid depth range (far = bright); invalid target black."""
        pred, target = pred.detach().float().cpu(), target.detach().float().cpu()
        valid = _valid(target)
        ref = target[valid] if valid.any() else pred
        lo, hi = ref.min(), ref.max()

        def grey(x: Tensor) -> Tensor:
            return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1).expand(3, -1, -1)

        return grey(pred), torch.where(valid, grey(target), 0)
