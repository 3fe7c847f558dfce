"""Worker for test_crash_resume: one real tiny CPU fit, optionally killed or resumed.

Run as `python tests/crash_fit.py KIND DATA OUT [--workers N] [--crash-at STEP] [--resume CKPT]`
with KIND `mtl` (`MultiTaskLightningModule` on augmented NYU-v2 files at DATA) or `meta`
(`MetaSparsityModule` on meta-batches of the same files), or call `fit` in-process. A fit
checkpoints OUT/last.ckpt every 2 optimizer steps; `crash_at=STEP` SIGKILLs the process as the
batch of global step STEP starts; `resume=CKPT` continues from a checkpoint. A fit that ends
returns (and the script saves as OUT/result.pt) the module's state dict, the optimizer's state
dict and the global step.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import NYUv2DataModule
from datamodules.meta import MetaTaskDataModule
from lightning_mtl import MetaSparsityModule, MultiTaskLightningModule, ProxAdamW
from tests.conftest import TINY_MODEL

TASKS = ["seg", "depth", "normal"]
MAX_EPOCHS = 2


class CrashAt(L.Callback):
    """SIGKILL (no clean-up, no last save) as the batch of global step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def build(
    kind: str, data_root: str, workers: int
) -> tuple[L.LightningDataModule, L.LightningModule]:
    nyu = NYUv2DataModule(
        data_root,
        tasks=None if kind == "meta" else TASKS,
        batch_size=4,
        num_workers=workers,
        image_size=(32, 32),
        augment=True,
        val_fraction=0.2,
    )
    optimizer = functools.partial(ProxAdamW, lr=0.05)
    if kind == "mtl":
        module = MultiTaskLightningModule(
            tasks=TASKS, targets=nyu.targets, lambda_=0.05, optimizer=optimizer, **TINY_MODEL
        )
        return nyu, module
    data = MetaTaskDataModule(
        nyu,
        tasks=TASKS,
        meta_batch_size=2,
        support_size=4,
        query_size=4,
        meta_batches_per_epoch=4,
        num_workers=workers,
    )
    module = MetaSparsityModule(
        tasks=TASKS,
        targets=data.targets,
        lambda_init=0.3,
        inner_lr=1e-3,
        rho_lr=0.05,
        optimizer=optimizer,
        **TINY_MODEL,
    )
    return data, module


def fit(
    kind: str,
    data_root: str,
    out: Path,
    workers: int = 0,
    crash_at: int | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    L.seed_everything(3)
    data, module = build(kind, data_root, workers)
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=out, every_n_train_steps=2, save_last=True)
    ]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=MAX_EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=out,
        callbacks=callbacks,
    )
    trainer.fit(module, data, ckpt_path=resume)
    return {
        "state_dict": module.state_dict(),
        "optimizer": trainer.optimizers[0].state_dict(),
        "global_step": trainer.global_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["mtl", "meta"])
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--resume")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small, busy CPU: no oversubscription
    result = fit(args.kind, args.data, args.out, args.workers, args.crash_at, args.resume)
    torch.save(result, args.out / "result.pt")


if __name__ == "__main__":
    main()
