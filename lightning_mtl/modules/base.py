"""MultiTaskModuleBase: what every multi-task LightningModule here shares.

The tasks, the network (built from its `ModelSpec`, `model_spec`), the grouped convs and their
sparsity settings, the optimizer param groups, evaluation (val/test/predict steps and metrics,
NaN for a task with a non-finite prediction), the non-finite loss/gradient stop (one host read
per optimizer step), the model summary's example input, the checkpoint architecture check
(against the checkpoint's `ModelSpec`) and exact-resume RNG bookkeeping.
Subclasses add how they train: `MultiTaskLightningModule` (weighted losses, automatic
optimisation, warm-up) and `MetaSparsityModule` (meta-learned λ, manual optimisation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_mtl.callbacks import RNGStateCheckpoint
from lightning_mtl.metrics import BatchWeightedMean, nan_if_non_finite
from lightning_mtl.models.builder import ModelSpec, build_from_spec
from lightning_mtl.modules.finite import NonFinitePredictions, NonFiniteStep
from lightning_mtl.sparsity import GroupSparsity, ProxAdamW, conv_weights
from lightning_mtl.sparsity.compact import CompactionReport, compact
from lightning_mtl.sparsity.groups import NamedWeights, group_size
from lightning_mtl.sparsity.plan import CompactionPlan
from lightning_mtl.targets import TargetSpec
from lightning_mtl.tasks import Task, build_task

__all__ = ["PARAM_GROUPS", "MultiTaskModuleBase"]

#: Optimizer param groups the modules build, in order. `param_groups` overrides them by name.
PARAM_GROUPS: tuple[str, ...] = ("sparse_convs", "backbone", "heads", "loss_weights")


class MultiTaskModuleBase(L.LightningModule):
    """Tasks, network, grouped convs, param groups and evaluation of a multi-task module.

    Args:
        tasks: task keys or `Task` objects (resolved against `targets`).
        targets: what the datamodule provides (`datamodule.targets`).
        sparsity: the group-sparsity settings.
        per_layer_groups: one `sparse_convs/{conv}` param group per grouped conv (per-layer λ);
            default: when `sparsity.layer_lambdas` is set.
        optimizer, lr_scheduler: factories taking param groups / the optimizer.
        param_groups: per-group optimizer overrides by group name (see `PARAM_GROUPS`).
        network: the network's other `ModelSpec` fields (`backbone`, `backbone_options`,
            `head_channels`, `taps`, `tap_output`).
    """

    def __init__(
        self,
        tasks: Sequence[str | Task],
        targets: Mapping[str, TargetSpec] | None,
        *,
        sparsity: GroupSparsity,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None = None,
        param_groups: Mapping[str, Mapping[str, float]] | None = None,
        per_layer_groups: bool | None = None,
        **network: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(param_groups or {}) - set(PARAM_GROUPS))
        if unknown:
            raise ValueError(
                f"param_groups has unknown groups {unknown}; the groups are {list(PARAM_GROUPS)}"
            )
        self.sparsity = sparsity
        self.tasks: dict[str, Task] = _resolve_tasks(tasks, targets or {})
        # what a compacted model file stores and a resumed checkpoint must agree with
        self.model_spec = ModelSpec(self.tasks, **network)
        self.model = build_from_spec(self.model_spec)
        self.sparse_names = [name for name, _ in conv_weights(self.model, sparsity.layers)]
        sparsity.check_layers(self.sparse_names)
        # what train-time compaction removed (`compact_model`), in the original layers' indices,
        # and the grouped convs' original shapes, which the statistics keep counting against
        self.compaction_plan = CompactionPlan({})
        self.dense_conv_shapes = {name: tuple(w.shape) for name, w in self.sparse_weights()}
        self.per_layer_groups = (
            sparsity.layer_lambdas is not None if per_layer_groups is None else per_layer_groups
        )
        self.param_group_overrides = dict(param_groups or {})
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.val_metrics = nn.ModuleDict(
            {
                k: nan_if_non_finite(t.build_metrics()).clone(prefix=f"val/{k}/")
                for k, t in self.tasks.items()
            }
        )
        self.test_metrics = nn.ModuleDict(
            {
                k: nan_if_non_finite(t.build_metrics()).clone(prefix=f"test/{k}/")
                for k, t in self.tasks.items()
            }
        )
        # the step's NaN/inf flag: losses (training_step), gradients (on_before_optimizer_step)
        self.non_finite_step = NonFiniteStep()
        # the val/test batches of the epoch with a NaN/inf prediction, per task: see _evaluate
        self.non_finite_predictions = NonFinitePredictions(list(self.tasks))
        # the val/test losses by logged name ("val/loss", "val/seg/loss", …): see _log_loss
        self.eval_losses = nn.ModuleDict(
            {
                name: BatchWeightedMean()
                for split in ("val", "test")
                for name in (f"{split}/loss", *(f"{split}/{k}/loss" for k in self.tasks))
            }
        )

    # -- model -------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images)

    def setup(self, stage: str) -> None:
        """Give the model summary a zero image batch at the datamodule's `image_size` (when it
        has one), so it counts FLOPs."""
        size = getattr(self.trainer.datamodule, "image_size", None)
        if self.example_input_array is None and size is not None:
            self.example_input_array = torch.zeros(1, 3, *size)

    def sparse_weights(self, original_shapes: bool = False) -> NamedWeights:
        """The grouped conv weights (name, tensor), forward order — what the prox acts on.

        `original_shapes`: in the shapes of the architecture before train-time compaction, the
        removed channels as zeros (copies; the same tensors when nothing was removed) — what
        the sparsity statistics count, so that they compare with runs without compaction.
        """
        convs = dict(self.model.backbone.conv_layers())
        weights = [(name, convs[name].weight) for name in self.sparse_names]
        if not original_shapes or not self.compaction_plan.layers:
            return weights
        plan_names = {id(m): n for n, m in self.model.named_modules()}
        return [
            (n, self.compaction_plan.expand(plan_names[id(convs[n])], w, self.dense_conv_shapes[n]))
            for n, w in weights
        ]

    def compact_model(
        self,
        removable: Mapping[str, Tensor] | None = None,
        round_to: int | None = 8,
    ) -> CompactionReport:
        """Remove the dead channels of the network in place (`sparsity.compact`, `removable` as
        there) and add what went to `compaction_plan`, which checkpoints store so that a resumed
        run rebuilds the compacted architecture. The report's plan counts in the layers as they
        were just before (the step train-time compaction slices the optimizer state by)."""
        param = next(self.model.parameters())
        example = self.example_input_array
        if example is None:
            example = torch.zeros(1, 3, 64, 64)
        example = example.to(device=param.device, dtype=param.dtype)
        report = compact(self.model, example, round_to=round_to, removable=removable)
        self.compaction_plan = self.compaction_plan.compose(report.plan)
        return report

    def configured_lambdas(self) -> dict[str, float]:
        """λ per grouped conv once any warm-up is over."""
        return self.sparsity.lambdas(self.sparse_names)

    def prox_optimizers(self) -> list[ProxAdamW]:
        """The `ProxAdamW`s a Trainer has built for this module (none outside a Trainer)."""
        optimizers = self._trainer.optimizers if self._trainer is not None else []
        return [o for o in optimizers if isinstance(o, ProxAdamW)]

    # -- steps -------------------------------------------------------------------------------

    def task_losses(self, batch: Mapping[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
        """Predictions and each task's loss on a batch."""
        preds = self.model(batch["image"])
        losses = {k: t.loss(preds[k], batch[t.target_key]) for k, t in self.tasks.items()}
        return preds, losses

    def on_train_start(self) -> None:
        self.non_finite_step.reset()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop on a NaN/inf loss of the step's (micro-)batches, which `training_step` added to
        `non_finite_step`, or gradient (not under fp16 AMP, whose scaler skips those steps): the
        step's one host read."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            self.non_finite_step.add_grads({n: p.grad for n, p in self.named_parameters()})
        self.non_finite_step.raise_if_set(self.global_step)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def on_validation_epoch_start(self) -> None:
        self.non_finite_predictions.reset()

    def on_test_epoch_start(self) -> None:
        self.non_finite_predictions.reset()

    def on_validation_epoch_end(self) -> None:
        self.non_finite_predictions.warn("val", self.current_epoch)

    def on_test_epoch_end(self) -> None:
        self.non_finite_predictions.warn("test", self.current_epoch)

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        preds = self.model(batch["image"])
        return {k: self.tasks[k].metric_input(p) for k, p in preds.items()}

    def _evaluate(self, batch: Mapping[str, Tensor], split: str, metrics: nn.ModuleDict) -> None:
        """Log the losses and update the metrics; every metric of a task whose prediction holds
        a NaN/inf is NaN for the split (`NaNIfNonFinite`, marked on the device: no host read),
        with a warning at the epoch's end."""
        preds, losses = self.task_losses(batch)
        size = batch["image"].shape[0]
        self._log_loss(f"{split}/loss", sum(losses.values()), size)
        non_finite = self.non_finite_predictions.add(preds)
        for (key, task), flag in zip(self.tasks.items(), non_finite, strict=True):
            self._log_loss(f"{split}/{key}/loss", losses[key], size)
            metrics[key].update(
                task.metric_input(preds[key]), task.metric_target(batch[task.target_key])
            )
            for metric in metrics[key].values():
                metric.mark_non_finite(flag)
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
        """Param groups `sparse_convs` (or `sparse_convs/{conv}` per layer), `backbone`, `heads`
        and the subclass's `extra_param_groups()`, with the `param_groups` overrides applied.

        The sparse groups name their convs (`layers`), so the optimizer reads and sets λ per
        conv (`ProxAdamW.lambdas`/`set_lambda`); every other group has λ = 0.
        """
        sparse = self.sparse_weights()
        sparse_ids = {id(w) for _, w in sparse}
        prox = {
            "prox_metric": self.sparsity.prox_metric,
            "penalty": self.sparsity.penalty,
            "group_by": self.sparsity.group_by,
        }
        lambdas = self.configured_lambdas()
        sizes = self._original_group_sizes()
        if self.per_layer_groups:
            sparse_groups = {
                f"sparse_convs/{name}": {
                    "params": [w],
                    "layers": [name],
                    "lambda_": lambdas[name],
                    **prox,
                    **({"group_sizes": [sizes[name]]} if sizes else {}),
                }
                for name, w in sparse
            }
        else:
            sparse_groups = {
                "sparse_convs": {
                    "params": [w for _, w in sparse],
                    "layers": [n for n, _ in sparse],
                    "lambda_": self.sparsity.lambda_,
                    **prox,
                    **({"group_sizes": [sizes[n] for n, _ in sparse]} if sizes else {}),
                }
            }
        groups: dict[str, dict[str, Any]] = {
            **sparse_groups,
            "backbone": {
                "params": [p for p in self.model.backbone.parameters() if id(p) not in sparse_ids],
                "lambda_": 0.0,
            },
            "heads": {"params": list(self.model.heads.parameters()), "lambda_": 0.0},
            **self.extra_param_groups(),
        }
        for name, overrides in self.param_group_overrides.items():
            for group_name, group in groups.items():
                if group_name.split("/")[0] == name:
                    group.update(overrides)
        return [{"name": n, **g} for n, g in groups.items() if g["params"]]

    def _original_group_sizes(self) -> dict[str, int] | None:
        """Once compacted in training: each grouped conv's group size in the original
        architecture (the p_g its penalty weight √p_g keeps); None before."""
        if not self.compaction_plan.layers:
            return None
        group_by = self.sparsity.group_by
        return {
            name: group_size(torch.empty(shape, device="meta"), group_by)
            for name, shape in self.dense_conv_shapes.items()
        }

    def extra_param_groups(self) -> dict[str, dict[str, Any]]:
        """Param groups a subclass adds after `heads` (by name; λ = 0)."""
        return {}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_param_groups())
        strongest = max(self.configured_lambdas().values(), default=0.0)
        if strongest > 0 and not isinstance(optimizer, ProxAdamW):
            raise ValueError(
                f"lambda_={strongest} needs an optimizer that applies the prox "
                f"(lightning_mtl.sparsity.ProxAdamW); got {type(optimizer).__name__}"
            )
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    # -- checkpoints -------------------------------------------------------------------------

    def configure_callbacks(self) -> list[Callback]:
        """The exact-resume RNG bookkeeping; subclasses add theirs."""
        return [RNGStateCheckpoint()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_spec"] = self.model_spec.to_data()
        checkpoint["compaction_plan"] = self.compaction_plan.to_data()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another architecture; rebuild a compacted one from the checkpoint's plan (a
        checkpoint of train-time compaction) before Lightning loads its weights."""
        if "model_spec" in checkpoint:
            saved = checkpoint["model_spec"]
        else:  # a checkpoint from before checkpoints held the spec: its hyperparameters
            saved = _legacy_spec_data(checkpoint.get("hyper_parameters", {}), self.model_spec)
        _check_same_architecture(ModelSpec.from_data(saved), self.model_spec)
        plan = CompactionPlan.from_data(checkpoint.get("compaction_plan", {}))
        if plan != self.compaction_plan:
            self.model = build_from_spec(self.model_spec.without_pretrained_weights())
            plan.apply(self.model)
            self.compaction_plan = plan


def _legacy_spec_data(hparams: Mapping[str, Any], current: ModelSpec) -> dict[str, Any]:
    """The spec data of a checkpoint that stored only the modules' hyperparameters: its network
    options over the current spec's (an option it did not save cannot differ), its task keys
    with the current heads (or a placeholder head for a task the module lacks: keys suffice to
    tell the task sets apart)."""
    data = current.to_data()
    saved = {k: hparams[k] for k in data if k != "tasks" and k in hparams}
    saved["backbone_options"] = saved.get("backbone_options") or {}
    keys = [t if isinstance(t, str) else t.key for t in hparams.get("tasks") or data["tasks"]]
    placeholder = {"head": "dense", "out_channels": 0}
    tasks = {k: data["tasks"].get(k, placeholder) for k in keys}
    return {**data, **saved, "tasks": tasks}


def _check_same_architecture(saved: ModelSpec, current: ModelSpec) -> None:
    """A clear error instead of a state-dict key/size mismatch when a checkpoint of another
    network (any `ModelSpec` field) is loaded (resumed) into this module."""
    was, now = saved.to_data(), current.to_data()
    differ = {k: (was[k], now[k]) for k in was if was[k] != now[k]}
    if "tasks" in differ and list(saved.tasks) != list(current.tasks):
        differ["tasks"] = (list(saved.tasks), list(current.tasks))  # the keys say it shortest
    if differ:
        details = "; ".join(
            f"{k}: checkpoint {a!r}, this module {b!r}" for k, (a, b) in differ.items()
        )
        raise ValueError(
            f"the checkpoint was trained with another architecture ({details}); build the module "
            "with the checkpoint's settings, or load it with load_from_checkpoint"
        )


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
