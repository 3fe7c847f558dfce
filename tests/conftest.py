"""Shared fixtures: tiny models and tiny synthetic data so Trainer runs take seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

#: A dilated ResNet-18 with one block per stage at width 8: the real architecture, tiny.
TINY_MODEL = {
    "backbone": "resnet18",
    "backbone_options": {"width": 8, "layers": [1, 1, 1, 1]},
    "head_channels": 8,
}
TINY_DATA = {"image_size": (32, 32), "batch_size": 4, "num_train": 16, "num_val": 8, "num_test": 8}
#: Trainer arguments of the 2-process CPU DDP workers (tests/*ddp_fit.py).
DDP_TRAINER = {
    "accelerator": "cpu",
    "devices": 2,
    "strategy": "ddp",
    "max_epochs": 2,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def run_ddp_worker(worker: Path, out: Path, *args: str) -> tuple[dict, dict]:
    """Run a DDP worker script (`python WORKER OUT ARGS…`; Lightning launches rank 1) and load
    what its two ranks saved as OUT/rank{0,1}.pt."""
    import subprocess
    import sys

    import torch

    result = subprocess.run(
        [sys.executable, str(worker), str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=worker.parents[1],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


@pytest.fixture
def tiny_data():
    from datamodules import SyntheticDataModule

    def make(tasks=("seg", "depth", "normal"), **overrides):
        return SyntheticDataModule(tasks=list(tasks), **{**TINY_DATA, **overrides})

    return make


@pytest.fixture
def tiny_module():
    from lightning_mtl import MultiTaskLightningModule

    def make(datamodule, tasks=("seg", "depth", "normal"), **overrides):
        return MultiTaskLightningModule(
            tasks=list(tasks), targets=datamodule.targets, **{**TINY_MODEL, **overrides}
        )

    return make


@pytest.fixture
def sparse_checkpoint(tmp_path, tiny_data, tiny_module):
    """A tiny module trained one epoch with a strong prox, and its checkpoint file."""
    import functools

    import lightning as L

    from lightning_mtl import ProxAdamW

    data = tiny_data()
    module = tiny_module(data, lambda_=0.5, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, data)
    path = tmp_path / "sparse.ckpt"
    trainer.save_checkpoint(path)
    return module, path


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small, busy CPU more threads make the tiny fits much slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
