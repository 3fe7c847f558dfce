"""TrainTimeCompaction: remove channel groups that stayed zero from the model while it trains.

PruneTrain (Lym et al., 2019) for group-sparse training: once a group of a grouped conv has been
zero at the end of `dead_for_epochs` consecutive epochs, it is frozen at zero and, every
`every_n_epochs` epochs, physically removed with everything only it fed (`compact`): the conv's
input slice, the producer's output channel and BN channel, coupled residual channels. Training
goes on with the smaller model, so the later epochs compute less.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lightning_mtl.sparsity.compact import CompactionReport
from lightning_mtl.sparsity.groups import live_groups
from lightning_mtl.sparsity.plan import CompactionPlan

__all__ = ["TrainTimeCompaction", "compact_with_optimizer"]

#: param-group entries that describe the parameters rather than how they are optimised
_LAYOUT_KEYS = ("params", "group_sizes")


class TrainTimeCompaction(L.Callback):
    """At the start of every epoch: count, per group of each grouped conv, the consecutive
    epoch ends at which it was zero; at every `every_n_epochs`-th epoch, remove the groups
    counted `dead_for_epochs` times or more (`round_to` as in `compact`).

    The removal keeps the model's outputs (exact, as `compact`), slices the optimizer's state
    (Adam's moments, step) like the weights, keeps every param group's hyperparameters (lr, λ)
    and the LR schedulers, and re-wraps the model for DDP (every rank compacts the same, as its
    weights are the same). The module's `compaction_plan` (stored in checkpoints) rebuilds the
    architecture on resume; this callback's counts are in its checkpoint state. The sparsity
    statistics keep counting against the original architecture (`sparse_weights(
    original_shapes=True)`, a removed group counts as zero).

    What freezing changes: a removed group cannot revive, and a conv that lost output channels
    proxes its groups without the weights of those channels (which fed nothing). The
    `sparsity/revived_groups` figure of `SparsityMonitor`, logged in runs without this callback
    too, shows how many zero groups revive from one epoch to the next.

    Needs a module with automatic optimisation, one optimizer, `group_by="in_channel"` and
    `compact_model` (`MultiTaskLightningModule`).
    """

    def __init__(
        self, every_n_epochs: int = 1, dead_for_epochs: int = 1, round_to: int | None = 8
    ) -> None:
        if every_n_epochs < 1 or dead_for_epochs < 1:
            raise ValueError(
                f"every_n_epochs and dead_for_epochs must be ≥ 1, got {every_n_epochs} and "
                f"{dead_for_epochs}"
            )
        self.every_n_epochs = every_n_epochs
        self.dead_for_epochs = dead_for_epochs
        self.round_to = round_to
        #: per grouped conv, per group of the original layer: consecutive epoch ends at zero
        self.zero_epochs: dict[str, Tensor] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problems = []
        if not pl_module.automatic_optimization:
            problems.append("the module optimises manually")
        if not hasattr(pl_module, "compact_model"):
            problems.append(f"{type(pl_module).__name__} has no compact_model()")
        elif (group_by := pl_module.sparsity.group_by) != "in_channel":
            problems.append(f"group_by is {group_by!r} (only input-channel groups are removable)")
        if problems:
            raise ValueError(
                "TrainTimeCompaction needs a module with automatic optimisation, compact_model() "
                f"and group_by='in_channel' (MultiTaskLightningModule): {'; '.join(problems)}"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Count the zero groups of the epoch that just ended, then compact when it is time
        (at an epoch start, so a checkpoint of the previous epoch's end resumes to the same)."""
        epoch = trainer.current_epoch
        if epoch == 0:
            return
        for name, weight in pl_module.sparse_weights(original_shapes=True):
            zero = ~live_groups(weight, "in_channel").cpu()
            count = self.zero_epochs.get(name, torch.zeros_like(zero, dtype=torch.long))
            self.zero_epochs[name] = torch.where(zero, count + 1, 0)
        if epoch % self.every_n_epochs == 0:
            self._compact(trainer, pl_module, epoch)

    def _compact(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        removable = self._removable(pl_module)
        if not any(bool(mask.any()) for mask in removable.values()):
            return
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"TrainTimeCompaction needs one optimizer, the module has {len(trainer.optimizers)}"
            )
        report, optimizer = compact_with_optimizer(
            pl_module, trainer.optimizers[0], removable, self.round_to
        )
        if not report.plan.layers:
            return
        trainer.strategy.optimizers = [optimizer]
        for config in trainer.lr_scheduler_configs:
            config.scheduler.optimizer = optimizer
        strategy = trainer.strategy
        if isinstance(strategy.model, DistributedDataParallel):
            # Lightning's DDPStrategy wraps the LightningModule once, in `setup`; the wrapper
            # holds the removed parameters, so the compacted module is wrapped anew
            strategy.model = strategy._setup_model(strategy.model.module)
            strategy._register_ddp_hooks()
        removed = sum(report.removed_channels.values())
        rank_zero_info(
            f"TrainTimeCompaction, epoch {epoch}: removed {removed} input channels of "
            f"{len(report.removed_channels)} layers; params {report.params_before:,} -> "
            f"{report.params_after:,}, MACs {report.macs_before:,} -> {report.macs_after:,} "
            f"({report.macs_before / report.macs_after:.2f}x fewer)"
        )

    def _removable(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """Per grouped conv (its name in the network), per input channel of the conv as it is
        now: whether its group has been zero long enough to go."""
        plan: CompactionPlan = pl_module.compaction_plan
        convs = dict(pl_module.model.backbone.conv_layers())
        names = {id(m): n for n, m in pl_module.model.named_modules()}
        out = {}
        for name, count in self.zero_epochs.items():
            conv, shape = convs[name], pl_module.dense_conv_shapes[name]
            network_name = names[id(conv)]
            # input channels now → groups of the original layer (a grouped conv's group j is
            # position j of every conv group)
            inputs = plan.layers.get(network_name, {}).get("in", range(shape[1] * conv.groups))
            groups = torch.as_tensor([c % shape[1] for c in inputs], dtype=torch.long)
            out[network_name] = count[groups] >= self.dead_for_epochs
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"zero_epochs": dict(self.zero_epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.zero_epochs = dict(state_dict["zero_epochs"])


def compact_with_optimizer(
    module: L.LightningModule,
    optimizer: torch.optim.Optimizer,
    removable: Mapping[str, Tensor] | None,
    round_to: int | None,
) -> tuple[CompactionReport, torch.optim.Optimizer]:
    """Compact `module`'s network (`module.compact_model`) and give back its report and the
    optimizer to go on with: a new one over the compacted parameters, with the module's param
    groups, every group's hyperparameters as `optimizer` has them now and its state sliced as
    the weights were — or `optimizer` itself when nothing was removed."""
    before = copy.deepcopy(module.model)
    # the network's state by parameter name; parameters outside it (loss weights) keep theirs
    network = {
        n: optimizer.state[p] for n, p in module.model.named_parameters() if p in optimizer.state
    }
    report = module.compact_model(removable, round_to)
    if not report.plan.layers:
        return report, optimizer
    new = module.optimizer_factory(module.optimizer_param_groups())
    if len(new.param_groups) != len(optimizer.param_groups):
        raise RuntimeError("the compacted module built another set of param groups")
    for old_group, new_group in zip(optimizer.param_groups, new.param_groups, strict=True):
        # lr, λ and the rest as schedulers and callbacks left them; the new group sizes stay
        new_group.update({k: v for k, v in old_group.items() if k not in _LAYOUT_KEYS})
    sliced = _sliced_state(before, report.plan, network)
    for name, param in module.model.named_parameters():
        if name in sliced:
            new.state[param] = sliced[name]
    in_network = {id(p) for p in module.model.parameters()}
    for param in module.parameters():
        if id(param) not in in_network and param in optimizer.state:
            new.state[param] = optimizer.state[param]
    return report, new


def _sliced_state(
    before: nn.Module, plan: CompactionPlan, state: Mapping[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The optimizer state of `before`'s parameters (by name; the network as it was), each
    tensor laid out like its parameter sliced as `plan` slices `before`."""
    out = {name: dict(s) for name, s in state.items()}
    keys = {k for s in state.values() for k, v in s.items() if torch.is_tensor(v) and v.dim()}
    for key in sorted(keys):
        shadow = copy.deepcopy(before)  # the same layers, holding the state instead of weights
        with torch.no_grad():
            for name, param in shadow.named_parameters():
                value = state.get(name, {}).get(key)
                if value is not None:
                    param.data = value
            plan.apply(shadow)
        for name, param in shadow.named_parameters():
            if key in out.get(name, {}):
                out[name][key] = param.detach()
    return out
