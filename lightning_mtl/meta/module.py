"""MetaSparsityModule: learn the group-lasso strength λ with MAML-style inner and outer loops."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call

from lightning_mtl.meta.inner_loop import InnerSparsity, adapt, group_lasso
from lightning_mtl.modules.base import MultiTaskModuleBase
from lightning_mtl.modules.multitask import MultiTaskLightningModule
from lightning_mtl.registry import check_choice
from lightning_mtl.sparsity import GroupSparsity, ProxAdamW
from lightning_mtl.sparsity.config import ProxMetric
from lightning_mtl.sparsity.groups import GroupBy
from lightning_mtl.sparsity.stats import dead_groups_warning
from lightning_mtl.targets import TargetSpec
from lightning_mtl.tasks import Task

#: Where the outer loss gets an explicit λ·Ω term (see `MetaSparsityModule`).
ExplicitPenalty = Literal["none", "meta", "adapted"]

#: One meta-task of a meta-batch: its task keys and a support and a query batch.
MetaTask = Mapping[str, Any]


@dataclass
class MetaLoss:
    """The outer loss of one meta-batch and what is logged about it."""

    loss: Tensor
    inner_loss: Tensor  # mean support loss over the inner steps and meta-tasks
    query_losses: dict[str, Tensor]  # per meta-task, keyed "seg+depth"
    buffers: dict[str, Tensor]  # BN running stats after the query passes, meta-task mean


class MetaSparsityModule(MultiTaskModuleBase):
    """Meta-sparsity: the shared weights θ and the sparsity strength λ = exp(ρ) meta-learned.

    Each training batch is a meta-batch (`datamodules.MetaTaskDataModule`): B meta-tasks (task
    combinations), each with a support and a query batch. Per meta-task, K inner steps adapt
    θ on the support loss (sum of the meta-task's task losses) with the differentiable
    group-lasso prox of threshold α·λ·√p_g (or its penalty gradient); the outer loss is the sum
    of the adapted models' query losses. Adam updates θ and ρ on its gradient, then the
    adaptive prox with the current λ zeroes groups of θ (exact zeros in the meta-parameters).

    BatchNorm: every inner and query pass uses batch statistics; each meta-task updates its own
    copy of the running stats, and the module keeps their mean over meta-tasks (and ranks).
    Under DDP each rank runs its own meta-tasks; the outer gradients are averaged over ranks, so
    θ and λ stay identical everywhere.

    Args:
        tasks, targets, backbone, backbone_options, head_channels: as `MultiTaskLightningModule`
            (the meta-training tasks; meta-tasks are drawn from their combinations).
        lambda_init: λ at the start (> 0, since ρ = log λ).
        per_layer_lambda: one λ per grouped conv instead of one scalar.
        inner_steps: K, inner steps per meta-task.
        inner_lr: α, the inner SGD step size.
        inner_sparsity: `prox` (default) or `penalty` (λΩ's gradient added to the inner step).
        first_order: drop the Hessian terms of the inner steps; λ keeps its path through the
            inner prox/penalty.
        explicit_penalty: add an explicit λ·Ω term to the outer loss: `none` (default), `meta`
            (λ·Ω(θ), θ detached since the prox already handles θ; its derivative Ω > 0 only
            pushes λ down) or `adapted` (λ·Ω(φ_K) on each meta-task's adapted weights, with
            gradients to λ and θ: the authors' code).
        optimizer: outer optimizer factory; `ProxAdamW` applies the outer prox.
        rho_lr: outer learning rate of ρ.
        prox_metric: metric of the outer prox, `adaptive` (Adam's) or `euclidean`.
        group_by, sparse_layers: as `MultiTaskLightningModule`.
    """

    def __init__(
        self,
        tasks: Sequence[str | Task] = ("seg", "depth", "normal"),
        targets: Mapping[str, TargetSpec] | None = None,
        backbone: str = "resnet50",
        backbone_options: dict[str, Any] | None = None,
        head_channels: int = 256,
        lambda_init: float = 1e-4,
        per_layer_lambda: bool = False,
        inner_steps: int = 1,
        inner_lr: float = 1e-2,
        inner_sparsity: InnerSparsity = "prox",
        first_order: bool = False,
        explicit_penalty: ExplicitPenalty = "none",
        optimizer: OptimizerCallable = ProxAdamW,
        rho_lr: float = 1e-2,
        prox_metric: ProxMetric = "adaptive",
        group_by: GroupBy = "in_channel",
        sparse_layers: str | None = None,
    ) -> None:
        _check_meta_options(
            lambda_init, inner_steps, inner_lr, inner_sparsity, rho_lr, explicit_penalty
        )
        super().__init__(
            tasks,
            targets,
            backbone=backbone,
            backbone_options=backbone_options,
            head_channels=head_channels,
            sparsity=GroupSparsity(
                lambda_=lambda_init,
                prox_metric=prox_metric,
                group_by=group_by,
                layers=sparse_layers,
            ),
            optimizer=optimizer,
            per_layer_groups=per_layer_lambda,
        )
        self.save_hyperparameters(ignore=["optimizer"])
        self.automatic_optimization = False
        shape = (len(self.sparse_names),) if per_layer_lambda else ()
        self.rho = nn.Parameter(torch.full(shape, math.log(lambda_init)))
        self._warned_dead = False

    # -- λ -----------------------------------------------------------------------------------

    def layer_lambdas(self) -> dict[str, Tensor]:
        """λ per grouped conv (a function of ρ, differentiable), keyed by conv name."""
        lam = self.rho.exp().expand(len(self.sparse_names))
        return dict(zip(self.sparse_names, lam.unbind(), strict=True))

    @property
    def current_lambda(self) -> float:
        """λ (the mean over layers when λ is per layer)."""
        return float(self.rho.detach().exp().mean())

    # -- meta-test ---------------------------------------------------------------------------

    def finetune_module(
        self,
        tasks: Sequence[str | Task],
        targets: Mapping[str, TargetSpec] | None = None,
        meta_init: bool = True,
        **overrides: Any,
    ) -> MultiTaskLightningModule:
        """A MultiTaskLightningModule for `tasks` with λ* fixed (per layer when learned so).

        `meta_init=True` starts from the meta-learned θ*: the backbone and the heads of tasks
        that were meta-trained; any other task gets a new head. `meta_init=False` starts from
        scratch (the reference a meta-test compares with). `overrides` go to the module (the
        optimizer, the weighting, …).
        """
        options: dict[str, Any] = {
            **self.model_spec.network_options(),
            "lambda_": self.current_lambda,
            "prox_metric": self.sparsity.prox_metric,
            "group_by": self.sparsity.group_by,
            "sparse_layers": self.sparsity.layers,
        }
        if self.per_layer_groups:
            options["layer_lambdas"] = {n: float(v) for n, v in self.layer_lambdas().items()}
        module = MultiTaskLightningModule(tasks, targets, **{**options, **overrides})
        if meta_init:
            module.model.backbone.load_state_dict(self.model.backbone.state_dict())
            for key, head in module.model.heads.items():
                if key in self.model.heads:
                    head.load_state_dict(self.model.heads[key].state_dict())
        return module

    # -- the meta objective ------------------------------------------------------------------

    def meta_loss(self, meta_batch: Sequence[MetaTask]) -> MetaLoss:
        """Outer loss Σ_τ L_τ^query(φ_K^τ), with the graph back to θ and ρ."""
        named = dict(self.model.named_parameters())
        param_name = {id(p): n for n, p in named.items()}
        weights_and_lambdas = list(
            zip(self.sparse_weights(), self.layer_lambdas().values(), strict=True)
        )
        lambdas = {param_name[id(w)]: lam for (_, w), lam in weights_and_lambdas}
        total = self.rho.new_zeros(())
        inner_losses: list[Tensor] = []
        query_losses: dict[str, Tensor] = {}
        buffer_sums: dict[str, Tensor] = {}
        for meta_task in meta_batch:
            keys = self._meta_task_keys(meta_task)
            query, losses, buffers = self._adapt_and_query(meta_task, keys, named, lambdas)
            total = total + query
            inner_losses.extend(losses)
            query_losses["+".join(keys)] = query.detach()
            for n, b in buffers.items():
                buffer_sums[n] = buffer_sums[n] + b if n in buffer_sums else b
        if self.hparams.explicit_penalty == "meta":
            for (_, w), lam in weights_and_lambdas:
                total = total + lam * group_lasso(w.detach(), self.sparsity.group_by)
        count = len(meta_batch)
        mean_buffers = {
            n: b / count if b.is_floating_point() else b // count for n, b in buffer_sums.items()
        }
        return MetaLoss(total, torch.stack(inner_losses).mean(), query_losses, mean_buffers)

    def _meta_task_keys(self, meta_task: MetaTask) -> list[str]:
        keys = list(meta_task["tasks"])
        unknown = [k for k in keys if k not in self.tasks]
        if unknown:
            raise ValueError(
                f"meta-task {keys} has tasks {unknown} this module has no head for; "
                f"its tasks are {list(self.tasks)}"
            )
        return keys

    def _adapt_and_query(
        self,
        meta_task: MetaTask,
        keys: list[str],
        named: Mapping[str, Tensor],
        lambdas: Mapping[str, Tensor],
    ) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
        """K inner steps on the support batch from θ (backbone + the meta-task's heads), then
        the query loss (plus λ·Ω(φ_K) with `explicit_penalty="adapted"`); BN running stats go
        to a copy, returned."""
        params = {n: p for n, p in named.items() if _belongs_to(n, keys)}
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        hp = self.hparams
        phi, losses = adapt(
            lambda phi: self._task_loss(phi, buffers, keys, meta_task["support"]),
            params,
            {n: lam for n, lam in lambdas.items() if n in params},
            steps=hp.inner_steps,
            lr=hp.inner_lr,
            sparsity=hp.inner_sparsity,
            first_order=hp.first_order,
            group_by=self.sparsity.group_by,
        )
        query = self._task_loss(phi, buffers, keys, meta_task["query"])
        if hp.explicit_penalty == "adapted":
            for name, lam in lambdas.items():
                if name in phi:
                    query = query + lam * group_lasso(phi[name], self.sparsity.group_by)
        return query, losses, buffers

    def _task_loss(
        self,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor],
        keys: list[str],
        batch: Mapping[str, Tensor],
    ) -> Tensor:
        """Σ_{t ∈ keys} L_t of the model run with `params` and `buffers`."""
        preds = functional_call(self.model, (params, buffers), (batch["image"],), {"tasks": keys})
        return sum(self.tasks[k].loss(preds[k], batch[self.tasks[k].target_key]) for k in keys)

    # -- the outer step ----------------------------------------------------------------------

    def training_step(self, meta_batch: Sequence[MetaTask], batch_idx: int) -> Tensor:
        result = self.meta_loss(meta_batch)
        # read with the gradients' check in on_before_optimizer_step, before the step
        self.non_finite_step.add_losses(result.query_losses, self.global_step)
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(result.loss, [p for _, p in named], allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for (_, p), g in zip(named, grads, strict=True)
        ]
        self._apply_reduced(named, grads, result.buffers)
        self._log_step(result, len(meta_batch))  # before zero_grad clears ρ's gradient
        lambdas = {name: float(lam.detach()) for name, lam in self.layer_lambdas().items()}
        for optimizer in self.prox_optimizers():
            optimizer.set_lambda(lambdas)
        self.optimizers().step()
        self.optimizers().zero_grad()
        self._warn_if_all_dead()
        return result.loss.detach()

    def _apply_reduced(
        self, named: list[tuple[str, Tensor]], grads: list[Tensor], buffers: Mapping[str, Tensor]
    ) -> None:
        """Average gradients and BN stats over ranks in one all-reduce; set .grad and buffers.

        Integer buffers (BN batch counts) travel as floats, exact up to 2²⁴, and are rounded.
        """
        model_buffers = dict(self.model.named_buffers())
        dtype = grads[0].dtype
        parts = [g.reshape(-1) for g in grads] + [b.reshape(-1).to(dtype) for b in buffers.values()]
        flat = self.trainer.strategy.reduce(torch.cat(parts), reduce_op="mean")
        chunks = iter(flat.split([t.numel() for t in parts]))
        for (_, p), chunk in zip(named, chunks, strict=False):  # the buffers follow
            p.grad = chunk.view_as(p).clone()
        for n in buffers:
            target = model_buffers[n]
            chunk = next(chunks).view_as(target)
            target.copy_(chunk if target.is_floating_point() else chunk.round())

    def _log_step(self, result: MetaLoss, count: int) -> None:
        log = {"batch_size": count, "on_step": True, "on_epoch": False}
        self.log("train/loss", result.loss.detach(), prog_bar=True, **log)
        self.log("meta/inner_loss", result.inner_loss, **log)
        for key, loss in result.query_losses.items():
            self.log(f"meta/query/{key}", loss, **log)
        self.log("lambda", self.current_lambda, prog_bar=True, **log)
        rho_grad = self.rho.grad if self.rho.grad is not None else torch.zeros_like(self.rho)
        self.log("meta/rho_grad", rho_grad.norm(), **log)
        if self.per_layer_groups:
            for name, lam in self.layer_lambdas().items():
                self.log(f"lambda/{name}", lam.detach(), **log)

    def _warn_if_all_dead(self) -> None:
        if self._warned_dead:
            return
        warning = dead_groups_warning(
            self.sparse_weights(),
            self.sparsity.group_by,
            f"step {self.global_step}",
            self.current_lambda,
            advice="λ's hypergradient is 0 from here on; start from a smaller lambda_init or "
            "lower rho_lr",
        )
        if warning is not None:
            self._warned_dead = True
            rank_zero_warn(warning)

    # -- optimisation ------------------------------------------------------------------------

    def extra_param_groups(self) -> dict[str, dict[str, Any]]:
        """`rho`: ρ = log λ, with its own learning rate and no weight decay (λ = 0)."""
        return {
            "rho": {
                "params": [self.rho],
                "lr": self.hparams.rho_lr,
                "lambda_": 0.0,
                "weight_decay": 0.0,
            }
        }


def _belongs_to(param_name: str, keys: Sequence[str]) -> bool:
    """Whether a MultiTaskModel parameter is adapted for a meta-task: backbone or its heads."""
    part, _, rest = param_name.partition(".")
    return part == "backbone" or (part == "heads" and rest.split(".")[0] in keys)


def _check_meta_options(
    lambda_init: float,
    inner_steps: int,
    inner_lr: float,
    inner_sparsity: str,
    rho_lr: float,
    explicit_penalty: str,
) -> None:
    if not (lambda_init > 0 and math.isfinite(lambda_init)):
        raise ValueError(
            f"lambda_init must be a finite number > 0 (λ = exp(ρ) is learned in log space), "
            f"got {lambda_init!r}"
        )
    if int(inner_steps) != inner_steps or inner_steps < 1:
        raise ValueError(f"inner_steps (K) must be an int >= 1, got {inner_steps!r}")
    if not inner_lr > 0:
        raise ValueError(f"inner_lr must be > 0, got {inner_lr!r}")
    check_choice("inner_sparsity", inner_sparsity, InnerSparsity)
    if not rho_lr >= 0:
        raise ValueError(f"rho_lr must be >= 0 (0 keeps λ fixed), got {rho_lr!r}")
    check_choice("explicit_penalty", explicit_penalty, ExplicitPenalty)
