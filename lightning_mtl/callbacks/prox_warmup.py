"""ProxWarmup: dense training for the first epochs, then the prox at the configured λ."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import lightning as L

from lightning_mtl.sparsity import ProxAdamW


class ProxWarmup(L.Callback):
    """λ = 0 in every `ProxAdamW` of the module before `start_epoch`, the configured λ after.

    The configured λ per conv comes from `configured_lambdas(pl_module)` (default: the module's
    `configured_lambdas()`), so a run resumed during or after the warm-up gets it right whatever
    the checkpointed optimizer held. Set at every epoch start; nothing to checkpoint.
    """

    def __init__(
        self,
        start_epoch: int,
        configured_lambdas: Callable[[L.LightningModule], Mapping[str, float]] | None = None,
    ) -> None:
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.start_epoch = start_epoch
        self.configured_lambdas = configured_lambdas or (lambda module: module.configured_lambdas())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        active = trainer.current_epoch >= self.start_epoch
        lambdas = self.configured_lambdas(pl_module)
        for optimizer in trainer.optimizers:
            if isinstance(optimizer, ProxAdamW):
                optimizer.set_lambda(dict(lambdas) if active else 0.0)
