"""Worker for test_ddp: a real 2-process CPU DDP (gloo) fit with the prox on.

Run as `python tests/ddp_fit.py OUT_DIR`; Lightning's launcher re-runs this script for rank 1.
Each rank saves its final state dict to OUT_DIR/rank{r}.pt.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import SyntheticDataModule
from lightning_mtl import MultiTaskLightningModule, ProxAdamW
from tests.conftest import DDP_TRAINER, TINY_DATA, TINY_MODEL


def main(out: Path) -> None:
    L.seed_everything(0)
    data = SyntheticDataModule(tasks=["seg", "depth", "normal"], **TINY_DATA)
    model = MultiTaskLightningModule(
        tasks=["seg", "depth", "normal"],
        targets=data.targets,
        lambda_=0.2,
        optimizer=functools.partial(ProxAdamW, lr=1e-2),
        **TINY_MODEL,
    )
    trainer = L.Trainer(**DDP_TRAINER)
    trainer.fit(model, data)
    torch.save(model.state_dict(), out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
