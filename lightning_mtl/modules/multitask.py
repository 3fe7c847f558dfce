"""MultiTaskLightningModule: weighted multi-task losses, automatic optimisation, group sparsity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_mtl.callbacks import ProxWarmup, ResetOptimizerState
from lightning_mtl.lomt.model import TapOutput
from lightning_mtl.modules.base import MultiTaskModuleBase
from lightning_mtl.sparsity import GroupSparsity, ProxAdamW
from lightning_mtl.sparsity.config import ProxMetric
from lightning_mtl.sparsity.groups import GroupBy
from lightning_mtl.targets import TargetSpec
from lightning_mtl.tasks import Task
from lightning_mtl.weighting import build_weighting

__all__ = ["MultiTaskLightningModule"]


class MultiTaskLightningModule(MultiTaskModuleBase):
    """Multi-task training with channel-group sparsity of the shared backbone.

    Args:
        tasks: task keys (`seg`, `depth`, `normal`, `edge`, a binary label, a registered user
            task) or `Task` objects.
        targets: what the datamodule provides (`datamodule.targets`); the CLI links it. Needed
            to resolve task keys, not for `Task` objects.
        backbone: a registered backbone (`list_backbones()`): `resnet18|34|50|101|152`, dilated
            (output stride 8 by default), or a torchvision model name (`convnext_tiny`,
            `efficientnet_b0`, …: `torchvision_backbone`).
        backbone_options: extra arguments of the backbone (`DilatedResNet`: `deep_stem`,
            `width`, `layers`, `weights`, `output_stride`; torchvision: `weights`,
            `output_stride` and `get_model` options such as `width_mult`).
        head_channels: channels of the DeepLabV3 heads (256 in the papers).
        weighting: loss weighting by registered name (`uncertainty`, `equal`, …).
        optimizer: optimizer factory taking param groups; `ProxAdamW` applies the prox.
        lr_scheduler: optional scheduler factory.
        lambda_: group-lasso strength λ of the sparse convs (0 = dense).
        layer_lambdas: λ per grouped conv by name, overriding `lambda_` for those convs (e.g.
            a meta-learned per-layer λ*); each conv then gets its own param group
            `sparse_convs/{name}`.
        prox_metric: the metric of the prox, `adaptive` (Adam's, the papers'), `euclidean`, or
            `uncorrected` (√v + ε without bias correction, the reference code's).
        penalty: the prox operator by registered name: `group_lasso`, `l1` (unstructured
            baseline) or one added with `register_prox_operator`.
        group_by: `in_channel` (the papers) or `out_channel`.
        sparse_layers: regex selecting which backbone convs are grouped (default: all).
        prox_start_epoch: epochs of dense warm-up before the prox is applied (`ProxWarmup`).
        param_groups: per-group overrides, e.g. `{"heads": {"lr": 1e-3}}`; groups are
            `sparse_convs`, `backbone`, `heads`, `loss_weights`.
        taps: LOMT stage 2 (layer-optimized model): task key → the backbone conv its head reads
            (`{"seg": "layer3.3.conv1", "edge": "layer2.3.conv2"}`), one per task. The backbone
            then stops after the deepest tap (`TruncatedBackbone`: nothing after it is computed
            or kept, so `sparse_layers` and the sparsity statistics see only the kept convs) and
            each head is built for its tap's channel count (`LayerOptimizedModel`). `None`: the
            conventional model, every head on the last feature map.
        tap_output: what a tap reads with `taps`: `conv` (the raw conv output, as the LOMT
            authors did) or `block` (the output of the residual block holding the conv; a stem
            conv gives its own output).
        reset_optimizer_every_epoch: clear the optimizer state (Adam's moments and step) at
            every epoch start after the first, as the reference code's rebuilt optimizer did
            (`ResetOptimizerState`); with `prox_metric="uncorrected"` the papers' λ values mean
            what they meant there (docs/sparsity.md).
    """

    def __init__(
        self,
        tasks: Sequence[str | Task] = ("seg", "depth", "normal"),
        targets: Mapping[str, TargetSpec] | None = None,
        backbone: str = "resnet50",
        backbone_options: dict[str, Any] | None = None,
        head_channels: int = 256,
        weighting: str = "uncertainty",
        optimizer: OptimizerCallable = ProxAdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lambda_: float = 0.0,
        layer_lambdas: dict[str, float] | None = None,
        prox_metric: ProxMetric = "adaptive",
        penalty: str = "group_lasso",
        group_by: GroupBy = "in_channel",
        sparse_layers: str | None = None,
        prox_start_epoch: int = 0,
        param_groups: dict[str, dict[str, float]] | None = None,
        taps: dict[str, str] | None = None,
        tap_output: TapOutput = "conv",
        reset_optimizer_every_epoch: bool = False,
    ) -> None:
        sparsity = GroupSparsity(
            lambda_=lambda_,
            layer_lambdas=layer_lambdas,
            prox_metric=prox_metric,
            penalty=penalty,
            group_by=group_by,
            start_epoch=prox_start_epoch,
            layers=sparse_layers,
        )
        super().__init__(
            tasks,
            targets,
            backbone=backbone,
            backbone_options=backbone_options,
            head_channels=head_channels,
            sparsity=sparsity,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            param_groups=param_groups,
            taps=taps,
            tap_output=tap_output,
        )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.weighting = build_weighting(weighting, list(self.tasks))
        self.reset_optimizer_every_epoch = reset_optimizer_every_epoch

    @property
    def current_lambda(self) -> float:
        """λ the optimizer applies now (0 during warm-up; the mean over convs when per conv)."""
        optimizers = self.prox_optimizers()
        lambdas = optimizers[0].lambdas() if optimizers else self.configured_lambdas()
        values = list(lambdas.values())
        return float(sum(values) / len(values)) if values else 0.0

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        _, losses = self.task_losses(batch)
        self.non_finite_step.add_losses(losses, self.global_step)  # read before the step
        total = self.weighting(losses)
        size = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        for key, loss in losses.items():
            self.log(f"train/{key}/loss", loss, batch_size=size)
        for key, weight in self.weighting.weights().items():
            self.log(f"weights/{key}", weight, batch_size=size)
        # a CPU tensor: Lightning keeps it there (a float would be copied to the GPU every step)
        self.log("lambda", torch.tensor(self.current_lambda), batch_size=size)
        return total

    def extra_param_groups(self) -> dict[str, dict[str, Any]]:
        """`loss_weights`: the weighting's own parameters (uncertainty log-variances)."""
        return {"loss_weights": {"params": list(self.weighting.parameters()), "lambda_": 0.0}}

    def configure_callbacks(self) -> list[Callback]:
        """RNG bookkeeping, plus the dense warm-up when `prox_start_epoch` > 0 and the epoch
        reset of the optimizer state when `reset_optimizer_every_epoch`."""
        callbacks = super().configure_callbacks()
        if self.sparsity.start_epoch > 0:
            callbacks.append(ProxWarmup(self.sparsity.start_epoch))
        if self.reset_optimizer_every_epoch:
            callbacks.append(ResetOptimizerState())
        return callbacks
