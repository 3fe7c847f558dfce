"""RunSummary: print the end-of-run table (metrics, sparsity, parameters, where the run is)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table

from lightning_mtl.sparsity import sparsity_stats


class RunSummary(L.Callback):
    """At the end of `fit`, print per-task validation metrics, % group and % parameter sparsity
    of the grouped convs, parameter counts, the run folder, its checkpoint and its W&B run."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        console = Console()
        console.print(self.table(trainer, pl_module))
        console.print(
            f"run folder: {Path(trainer.log_dir or trainer.default_root_dir)}", soft_wrap=True
        )
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "")
        if checkpoint:
            console.print(f"checkpoint: {checkpoint}", soft_wrap=True)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                where = Path(run.dir).parent
                hint = f" (offline; upload with `wandb sync {where}`)" if run.offline else ""
                console.print(f"W&B run: {where}{hint}", soft_wrap=True)

    @staticmethod
    def table(trainer: L.Trainer, pl_module: L.LightningModule) -> Table:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        stats = sparsity_stats(
            pl_module.sparse_weights(original_shapes=True), pl_module.sparsity.group_by
        )
        params = sum(p.numel() for p in pl_module.parameters())
        nonzero = sum(int(p.count_nonzero()) for p in pl_module.parameters())
        table = Table(title=f"lightning-mtl run summary after {trainer.current_epoch} epochs")
        table.add_column("what")
        table.add_column("value", justify="right")
        for key in sorted(metrics):
            if not key.endswith("/loss"):
                table.add_row(key, f"{metrics[key]:.4f}")
        table.add_row("% group sparsity (grouped convs)", f"{stats.group_pct:.2f}")
        table.add_row("% parameter sparsity (grouped convs)", f"{stats.param_pct:.2f}")
        table.add_row("parameters (all)", f"{params:,}")
        table.add_row("non-zero parameters (all)", f"{nonzero:,}")
        return table
