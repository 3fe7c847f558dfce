"""Worker for test_meta_training: a real 2-process CPU DDP (gloo) fit of MetaSparsityModule.

Run as `python tests/meta_ddp_fit.py OUT_DIR`; Lightning's launcher re-runs this script for
rank 1. Each rank saves OUT_DIR/rank{r}.pt: its final state dict, ρ at the start, and what it
trained on (the global meta-batch numbers its sampler gave, and per step the task
combinations and the sum of the first support images).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import SyntheticDataModule
from datamodules.meta import MetaTaskDataModule
from lightning_mtl import MetaSparsityModule, ProxAdamW
from tests.conftest import DDP_TRAINER, TINY_MODEL

TASKS = ["seg", "depth", "normal"]


class RecordMetaBatches(L.Callback):
    """What this rank trains on: its sampler's meta-batch numbers and a fingerprint per step."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.steps: list[tuple[tuple[tuple[str, ...], ...], float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.numbers.extend(int(k) for k in trainer.train_dataloader.sampler)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        combos = tuple(tuple(t["tasks"]) for t in batch)
        self.steps.append((combos, float(batch[0]["support"]["image"].double().sum())))


def main(out: Path) -> None:
    torch.set_num_threads(1)  # two processes on a small CPU: no oversubscription
    L.seed_everything(0)
    data = MetaTaskDataModule(
        SyntheticDataModule(image_size=(16, 16), num_train=16, num_val=4, num_test=4, batch_size=4),
        tasks=TASKS,
        meta_batch_size=2,
        support_size=4,
        query_size=4,
        meta_batches_per_epoch=4,
    )
    model = MetaSparsityModule(  # a strong outer prox, a weak inner one: some groups die
        tasks=TASKS,
        targets=data.targets,
        lambda_init=1.0,
        inner_lr=1e-3,
        rho_lr=0.05,
        optimizer=functools.partial(ProxAdamW, lr=0.05),
        **TINY_MODEL,
    )
    rho_start = model.rho.detach().clone()
    record = RecordMetaBatches()
    trainer = L.Trainer(**DDP_TRAINER, callbacks=[record])
    trainer.fit(model, data)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "rho_start": rho_start,
            "global_step": trainer.global_step,
            "numbers": record.numbers,
            "steps": record.steps,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
