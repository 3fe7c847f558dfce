"""Shared fixtures: tiny models and tiny synthetic data so Trainer runs take seconds on a CPU."""

from __future__ import annotations

import os

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
