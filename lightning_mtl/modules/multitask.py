"""MultiTaskLightningModule: tasks + shared backbone + heads + loss weighting + sparsity."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_mtl.lomt.model import TAP_OUTPUTS
from lightning_mtl.metrics import BatchWeightedMean
from lightning_mtl.models.builder import build_multitask_model
from lightning_mtl.modules.finite import check_finite_grads, check_finite_losses
from lightning_mtl.sparsity import ProxAdamW, conv_weights
from lightning_mtl.sparsity.groups import GROUP_BY, NamedWeights
from lightning_mtl.sparsity.optimizer import PENALTIES, PROXES
from lightning_mtl.tasks import TargetSpec, Task, build_task
from lightning_mtl.weighting import build_weighting


@dataclass(frozen=True)
class SparsityOptions:
    """The sparsity settings of a module (see `MultiTaskLightningModule`'s arguments)."""

    lambda_: float
    layer_lambdas: dict[str, float] | None
    prox: str
    penalty: str
    group_by: str
    prox_start_epoch: int
    param_groups: dict[str, dict[str, float]] | None


#: Optimizer param groups the module builds, in order. `param_groups` overrides them by name.
PARAM_GROUPS: tuple[str, ...] = ("sparse_convs", "backbone", "heads", "loss_weights")


class MultiTaskLightningModule(L.LightningModule):
    """Multi-task training with channel-group sparsity of the shared backbone.

    Args:
        tasks: task keys (`seg`, `depth`, `normal`, `edge`, a binary label, a registered user
            task) or `Task` objects.
        targets: what the datamodule provides (`datamodule.targets`); the CLI links it. Needed
            to resolve task keys, not for `Task` objects.
        backbone: `resnet18|34|50|101`, always dilated (output stride 8 by default).
        backbone_options: extra `DilatedResNet` arguments (`deep_stem`, `width`, `layers`,
            `weights`, `output_stride`).
        head_channels: channels of the DeepLabV3 heads (256 in the papers).
        weighting: loss weighting (`uncertainty` or `equal`).
        optimizer: optimizer factory taking param groups; `ProxAdamW` applies the prox.
        lr_scheduler: optional scheduler factory.
        lambda_: group-lasso strength λ of the sparse convs (0 = dense).
        layer_lambdas: λ per grouped conv by name, overriding `lambda_` for those convs (e.g.
            a meta-learned per-layer λ*); each conv then gets its own param group
            `sparse_convs/{name}`.
        prox: `adaptive` (Adam's metric) or `euclidean`.
        penalty: `group_lasso` or `l1` (unstructured baseline).
        group_by: `in_channel` (the papers) or `out_channel`.
        sparse_layers: regex selecting which backbone convs are grouped (default: all).
        prox_start_epoch: epochs of dense warm-up before the prox is applied.
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
        prox: str = "adaptive",
        penalty: str = "group_lasso",
        group_by: str = "in_channel",
        sparse_layers: str | None = None,
        prox_start_epoch: int = 0,
        param_groups: dict[str, dict[str, float]] | None = None,
        taps: dict[str, str] | None = None,
        tap_output: str = "conv",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        _check_sparsity_options(lambda_, prox, penalty, group_by, prox_start_epoch, param_groups)
        self.tasks: dict[str, Task] = _resolve_tasks(tasks, targets or {})
        if tap_output not in TAP_OUTPUTS:
            raise ValueError(
                f"unknown tap_output {tap_output!r}; choose one of {list(TAP_OUTPUTS)}"
            )
        self.model = build_multitask_model(
            self.tasks,
            backbone=backbone,
            backbone_options=backbone_options,
            head_channels=head_channels,
            taps=taps,
            tap_output=tap_output,
        )
        self.weighting = build_weighting(weighting, list(self.tasks))
        self.sparse_names = [name for name, _ in conv_weights(self.model, sparse_layers)]
        _check_layer_lambdas(layer_lambdas, self.sparse_names)
        # read from here, not from hparams: a subclass saves its own hyperparameters
        self.sparsity = SparsityOptions(
            lambda_, layer_lambdas, prox, penalty, group_by, prox_start_epoch, param_groups
        )
        self.val_metrics = nn.ModuleDict(
            {k: t.build_metrics().clone(prefix=f"val/{k}/") for k, t in self.tasks.items()}
        )
        self.test_metrics = nn.ModuleDict(
            {k: t.build_metrics().clone(prefix=f"test/{k}/") for k, t in self.tasks.items()}
        )
        # the val/test losses by logged name ("val/loss", "val/seg/loss", …): see _log_loss
        self.eval_losses = nn.ModuleDict(
            {
                name: BatchWeightedMean()
                for split in ("val", "test")
                for name in (f"{split}/loss", *(f"{split}/{k}/loss" for k in self.tasks))
            }
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self._rng_before_sanity_check: dict[str, Any] | None = None

    # -- model -------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images)

    def sparse_weights(self) -> NamedWeights:
        """The grouped conv weights (name, tensor), forward order — what the prox acts on."""
        convs = dict(self.model.backbone.conv_layers())
        return [(name, convs[name].weight) for name in self.sparse_names]

    def configured_lambda(self, layer: str) -> float:
        """λ of one grouped conv once the warm-up is over (`layer_lambdas` or `lambda_`)."""
        return float((self.sparsity.layer_lambdas or {}).get(layer, self.sparsity.lambda_))

    @property
    def current_lambda(self) -> float:
        """λ the optimizer applies now (0 during warm-up; the mean over layers when per layer)."""
        groups = self._sparse_param_groups()
        if groups:
            values = [g["lambda_"] for g in groups for _ in g["params"]]
        else:
            values = [self.configured_lambda(name) for name in self.sparse_names]
        return float(sum(values) / len(values)) if values else 0.0

    def _split_sparse_group(self) -> bool:
        """Whether every grouped conv gets its own param group (per-layer λ)."""
        return self.sparsity.layer_lambdas is not None

    def _sparse_param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's `sparse_convs…` param groups, once a Trainer has built it."""
        return [
            group
            for optimizer in (self._trainer.optimizers if self._trainer is not None else [])
            for group in optimizer.param_groups
            if group.get("name", "").startswith("sparse_convs")
        ]

    # -- steps -------------------------------------------------------------------------------

    def _shared_step(self, batch: Mapping[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
        preds = self.model(batch["image"])
        losses = {k: t.loss(preds[k], batch[t.target_key]) for k, t in self.tasks.items()}
        return preds, losses

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        _, losses = self._shared_step(batch)
        check_finite_losses(losses, self.global_step)
        total = self.weighting(losses)
        size = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        for key, loss in losses.items():
            self.log(f"train/{key}/loss", loss, batch_size=size)
        for key, weight in self.weighting.weights().items():
            self.log(f"weights/{key}", weight, batch_size=size)
        self.log("lambda", self.current_lambda, batch_size=size)
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop on a NaN/inf gradient (not under fp16 AMP, whose scaler skips those steps)."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            grads = {n: p.grad for n, p in self.named_parameters()}
            check_finite_grads(grads, self.global_step)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        preds = self.model(batch["image"])
        return {k: self.tasks[k].metric_input(p) for k, p in preds.items()}

    def _evaluate(self, batch: Mapping[str, Tensor], split: str, metrics: nn.ModuleDict) -> None:
        preds, losses = self._shared_step(batch)
        size = batch["image"].shape[0]
        self._log_loss(f"{split}/loss", sum(losses.values()), size)
        for key, task in self.tasks.items():
            self._log_loss(f"{split}/{key}/loss", losses[key], size)
            metrics[key].update(
                task.metric_input(preds[key]), task.metric_target(batch[task.target_key])
            )
            self.log_dict(metrics[key], batch_size=size)

    def _log_loss(self, name: str, loss: Tensor, size: int) -> None:
        """Log a val/test loss as the mean of the batch losses weighted by batch size, summed
        over ranks by its torchmetrics state. (A logged tensor with `sync_dist=True` averages
        the ranks' summed batch sizes as an integer tensor, truncating it when ranks saw
        uneven data, e.g. 9 samples on 2 ranks give (5+4)//2 = 4: a loss 9/8 too large.)"""
        mean = self.eval_losses[name]
        mean.update(loss, size)
        self.log(name, mean, batch_size=size)

    # -- optimisation ------------------------------------------------------------------------

    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """Param groups named `sparse_convs`, `backbone`, `heads`, `loss_weights`."""
        hp = self.sparsity
        sparse = [w for _, w in self.sparse_weights()]
        sparse_ids = {id(w) for w in sparse}
        sparsity = {"prox": hp.prox, "penalty": hp.penalty, "group_by": hp.group_by}
        # λ is 0 during warm-up: see on_train_epoch_start
        if self._split_sparse_group():
            sparse_groups = {
                f"sparse_convs/{name}": {
                    "params": [w],
                    "layer": name,
                    "lambda_": self.configured_lambda(name),
                    **sparsity,
                }
                for name, w in self.sparse_weights()
            }
        else:
            sparse_groups = {"sparse_convs": {"params": sparse, "lambda_": hp.lambda_, **sparsity}}
        groups: dict[str, dict[str, Any]] = {
            **sparse_groups,
            "backbone": {
                "params": [p for p in self.model.backbone.parameters() if id(p) not in sparse_ids],
                "lambda_": 0.0,
            },
            "heads": {"params": list(self.model.heads.parameters()), "lambda_": 0.0},
            "loss_weights": {"params": list(self.weighting.parameters()), "lambda_": 0.0},
        }
        for name, overrides in (hp.param_groups or {}).items():
            for group_name, group in groups.items():
                if group_name.split("/")[0] == name:
                    group.update(overrides)
        return [{"name": n, **g} for n, g in groups.items() if g["params"]]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_param_groups())
        strongest = max((self.configured_lambda(n) for n in self.sparse_names), default=0.0)
        if strongest > 0 and not isinstance(optimizer, ProxAdamW):
            raise ValueError(
                f"lambda_={strongest} needs an optimizer that applies the prox "
                f"(lightning_mtl.sparsity.ProxAdamW); got {type(optimizer).__name__}"
            )
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    def on_train_epoch_start(self) -> None:
        """Switch the prox on once the warm-up epochs are over."""
        active = self.current_epoch >= self.sparsity.prox_start_epoch
        for group in self._sparse_param_groups():
            layer = group.get("layer")
            configured = self.sparsity.lambda_ if layer is None else self.configured_lambda(layer)
            group["lambda_"] = configured if active else 0.0

    # -- exact resume ------------------------------------------------------------------------
    # The global RNG streams (dropout; the shuffling of a plain DataLoader) are checkpointed and
    # restored when the checkpoint is loaded, and the sanity-check validation is made RNG-neutral
    # so it cannot shift them. The datamodules' train loaders draw nothing from them (their
    # order and augmentation come from `datamodules.sampling`), so the first batch after a
    # mid-epoch checkpoint sees the stream as saved; a plain shuffling loader draws its epoch's
    # permutation from it at the same point in both runs, so epoch-end resumes stay exact too.
    # Only the saving process's (rank 0's) streams are in a checkpoint and every rank resumes
    # with them: under DDP that is exact while the ranks' streams agree (`seed_everything` seeds
    # every rank alike and they draw alike); ranks seeded apart lose their own dropout streams.

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _check_same_architecture(checkpoint.get("hyper_parameters", {}), self.hparams)
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])

    def on_validation_start(self) -> None:
        if self.trainer.sanity_checking:
            self._rng_before_sanity_check = _rng_states()

    def on_validation_end(self) -> None:
        if self.trainer.sanity_checking:
            _set_rng_states(self._rng_before_sanity_check)


#: What must agree between a checkpoint and the module it is loaded into.
_ARCHITECTURE_KEYS = ("tasks", "backbone", "backbone_options", "head_channels", "taps")


def _check_same_architecture(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """A clear error instead of a state-dict key/size mismatch when a checkpoint of another
    backbone or task set is loaded (resumed) into this module."""

    def describe(hparams: Mapping[str, Any]) -> dict[str, Any]:
        tasks = [t if isinstance(t, str) else t.key for t in hparams.get("tasks") or []]
        return {"tasks": tasks, **{k: hparams.get(k) for k in _ARCHITECTURE_KEYS[1:]}}

    if not saved:
        return
    was, now = describe(saved), describe(current)
    differ = {k: (was[k], now[k]) for k in was if was[k] != now[k]}
    if differ:
        details = "; ".join(
            f"{k}: checkpoint {a!r}, this module {b!r}" for k, (a, b) in differ.items()
        )
        raise ValueError(
            f"the checkpoint was trained with another architecture ({details}); build the module "
            "with the checkpoint's settings, or load it with load_from_checkpoint"
        )


def _rng_states() -> dict[str, Any]:
    """The torch, numpy and python global RNG states as tensors and plain (weights-only) values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global stream)
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(states["python"])


def _resolve_tasks(tasks: Sequence[str | Task], targets: Mapping[str, TargetSpec]) -> dict:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    if not tasks:
        raise ValueError("tasks is empty: give at least one task key")
    resolved: dict[str, Task] = {}
    for task in tasks:
        if isinstance(task, str):
            if not targets:
                raise ValueError(
                    f"task {task!r} is a key: pass targets=datamodule.targets (the CLI links it) "
                    "or Task objects"
                )
            task = build_task(task, targets)
        if task.key in resolved:
            raise ValueError(f"task {task.key!r} is listed twice")
        resolved[task.key] = task
    return resolved


def _check_layer_lambdas(layer_lambdas: Mapping[str, float] | None, names: list[str]) -> None:
    unknown = sorted(set(layer_lambdas or {}) - set(names))
    if unknown:
        raise ValueError(
            f"layer_lambdas names unknown convs {unknown}; the grouped convs are {names}"
        )
    negative = {n: v for n, v in (layer_lambdas or {}).items() if not v >= 0}
    if negative:
        raise ValueError(f"layer_lambdas must be >= 0, got {negative}")


def _check_sparsity_options(
    lambda_: float,
    prox: str,
    penalty: str,
    group_by: str,
    prox_start_epoch: int,
    param_groups: Mapping[str, Any] | None,
) -> None:
    if not lambda_ >= 0:
        raise ValueError(f"lambda_ must be >= 0 (0 = dense), got {lambda_!r}")
    if prox not in PROXES:
        raise ValueError(f"unknown prox {prox!r}; allowed: {list(PROXES)}")
    if penalty not in PENALTIES:
        raise ValueError(f"unknown penalty {penalty!r}; allowed: {list(PENALTIES)}")
    if group_by not in GROUP_BY:
        raise ValueError(f"unknown group_by {group_by!r}; allowed: {list(GROUP_BY)}")
    if prox_start_epoch < 0:
        raise ValueError(f"prox_start_epoch must be >= 0, got {prox_start_epoch}")
    unknown = sorted(set(param_groups or {}) - set(PARAM_GROUPS))
    if unknown:
        raise ValueError(
            f"param_groups has unknown groups {unknown}; the groups are {list(PARAM_GROUPS)}"
        )
