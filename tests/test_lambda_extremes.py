"""λ so large that every group dies: a warning, training and evaluation go on, compaction
copes. (λ = 0 being AdamW bit for bit is in test_sparsity.)"""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mtl import ProxAdamW, sparsity_stats
from lightning_mtl.callbacks import SparsityMonitor
from lightning_mtl.sparsity import compact


def test_every_group_dead_warns_and_everything_still_works(tiny_data, tiny_module, tmp_path):
    data = tiny_data()
    module = tiny_module(data, lambda_=1e8, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    trainer = L.Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[SparsityMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
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
