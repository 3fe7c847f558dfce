"""PredictionSamples: save (and send to W&B) predictions next to targets for a few val images."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from lightning_mtl.reporting.figures import samples_plot, save_figure


class PredictionSamples(L.Callback):
    """Each validation epoch, render the first `num_samples` images of the first val batch with
    every task's prediction and target (each task's `visualize`) into `samples.png`."""

    def __init__(self, num_samples: int = 4, filename: str = "samples.png") -> None:
        self.num_samples = num_samples
        self.filename = filename

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        if not trainer.is_global_zero:
            return
        images = batch["image"][: self.num_samples]
        with torch.no_grad():
            preds = pl_module(images)
        columns = [("image", [img.float().cpu() for img in images])]
        for key, task in pl_module.tasks.items():
            targets = batch[task.target_key][: len(images)]
            pairs = [task.visualize(p, t) for p, t in zip(preds[key], targets, strict=True)]
            columns.append((f"{key} prediction", [p for p, _ in pairs]))
            columns.append((f"{key} target", [t for _, t in pairs]))
        path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename
        save_figure(samples_plot(columns), path, dpi=100)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="samples", images=[str(path)], step=trainer.global_step)
