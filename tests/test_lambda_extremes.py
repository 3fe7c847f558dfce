"""λ so large that every group dies: a warning, training and evaluation go on, compaction
copes. (λ = 0 being AdamW bit for bit is in test_sparsity.)"""

from __future__ import annotations

import functools

import pytest
import torch

from lightning_mtl import ProxAdamW, sparsity_stats
from lightning_mtl.callbacks import SparsityMonitor
from lightning_mtl.sparsity import compact
from tests.helpers import csv_logger, tiny_datamodule, tiny_module, tiny_trainer


def test_every_group_dead_warns_and_everything_still_works(tmp_path):
    data = tiny_datamodule()
    module = tiny_module(data, lambda_=1e8, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=2,
        logger=csv_logger(tmp_path),
        callbacks=[SparsityMonitor()],
        enable_checkpointing=False,
    )
    with pytest.warns(UserWarning, match="every channel group of the grouped convs is zero"):
        trainer.fit(module, data)
    assert trainer.current_epoch == 2, "training went on"
    assert sparsity_stats(module.sparse_weights()).group_pct == 100.0
    metrics = trainer.validate(module, data, verbose=False)[0]
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "val/seg/miou" in header and "sparsity/group_pct" in header

    model = module.model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    report = compact(model, x)
    assert report.params_after < report.params_before
    with torch.no_grad():
        after = model(x)
    for key in before:
        torch.testing.assert_close(after[key], before[key])
