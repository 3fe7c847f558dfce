"""SparsityMonitor: log the sparsity of the grouped convs and save the spy plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_mtl.reporting.figures import save_figure, spy_plot
from lightning_mtl.sparsity import live_groups, sparsity_stats
from lightning_mtl.sparsity.stats import dead_groups_warning


class SparsityMonitor(L.Callback):
    """Each validation epoch: log `sparsity/group_pct`, `sparsity/param_pct`,
    `sparsity/revived_groups` (groups zero at the previous validation and live now: what
    freezing zero groups, as `TrainTimeCompaction` does, would have prevented) and
    `sparsity/layer/{name}` (live-group fraction per conv), and write `sparsity.png` into the
    run folder (also sent to W&B when a WandbLogger is attached). Warns once when every group
    is zero (λ too large): training goes on, but the model has become constant.

    Works with any module whose `sparse_weights(original_shapes=True)` gives (name, weight) in
    forward order (`MultiTaskModuleBase`'s: in the original architecture's shapes once the
    module was compacted in training) and whose `sparsity` names the `group_by`.
    """

    def __init__(self, filename: str = "sparsity.png", log_layers: bool = True) -> None:
        self.filename = filename
        self.log_layers = log_layers
        self._warned_all_zero = False
        #: per conv, the groups that were zero at the last validation
        self.zero_groups: dict[str, Tensor] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        weights = pl_module.sparse_weights(original_shapes=True)
        group_by = pl_module.sparsity.group_by
        stats = sparsity_stats(weights, group_by)
        pl_module.log("sparsity/group_pct", stats.group_pct)
        pl_module.log("sparsity/param_pct", stats.param_pct)
        zero = {name: ~live_groups(w, group_by).cpu() for name, w in weights}
        revived = sum(
            int((self.zero_groups[n] & ~z).sum()) for n, z in zero.items() if n in self.zero_groups
        )
        self.zero_groups = zero
        pl_module.log("sparsity/revived_groups", float(revived))
        if self.log_layers:
            for name, fraction in stats.layers.items():
                pl_module.log(f"sparsity/layer/{name}", fraction)
        if not self._warned_all_zero:
            lambda_ = getattr(pl_module, "current_lambda", None)
            warning = dead_groups_warning(
                weights, group_by, f"epoch {trainer.current_epoch}", lambda_
            )
            if warning is not None:
                self._warned_all_zero = True
                rank_zero_warn(warning)
        if trainer.is_global_zero:
            self._save_plot(trainer, weights, group_by, stats.group_pct)

    def state_dict(self) -> dict[str, Any]:
        return {"zero_groups": dict(self.zero_groups)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.zero_groups = dict(state_dict.get("zero_groups", {}))

    def _save_plot(self, trainer: L.Trainer, weights, group_by: str, group_pct: float) -> None:
        title = f"epoch {trainer.current_epoch}: {group_pct:.1f}% zero groups"
        path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename
        save_figure(spy_plot(weights, group_by, title=title), path, dpi=120)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="sparsity/spy", images=[str(path)], step=trainer.global_step)
