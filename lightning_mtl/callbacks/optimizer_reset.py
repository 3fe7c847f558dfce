"""ResetOptimizerState: Adam restarted every epoch, as the reference code rebuilt its optimizer."""

from __future__ import annotations

import lightning as L


class ResetOptimizerState(L.Callback):
    """Clears the state of every optimizer at each train epoch start after the first.

    Adam's moments and step count restart, as rebuilding the optimizer every epoch did in the
    reference code (its λ values assume it, with `prox_metric="uncorrected"`); param groups,
    lr and λ are unchanged. Nothing to checkpoint: the state saved is the state after the
    reset, and Lightning runs `on_train_epoch_start` again only for an epoch that had not
    started, so a run resumed mid-epoch keeps what it saved and one resumed at an epoch
    boundary resets as an uninterrupted run does (tested).
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            for optimizer in trainer.optimizers:
                optimizer.state.clear()
