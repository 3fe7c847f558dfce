"""Worker for test_meta_training: a real 2-process CPU DDP (gloo) fit of MetaSparsityModule.

Run as `python tests/workers/meta_ddp_fit.py OUT_DIR`; Lightning's launcher re-runs this script
for rank 1. Each rank saves OUT_DIR/rank{r}.pt: its final state dict, ρ at the start, and what it
trained on (the global meta-batch numbers its sampler gave, and per step the task combinations
and the sum of the first support images).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import DDP_TRAINER, META_PRUNING, tiny_meta_datamodule, tiny_meta_module


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
    data = tiny_meta_datamodule()
    model = tiny_meta_module(data, **META_PRUNING)  # some groups die, λ is learned
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
