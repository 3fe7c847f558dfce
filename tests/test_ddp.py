"""DDP on 2 CPU processes (gloo): the prox keeps every rank's parameters bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_mtl.sparsity import live_groups
from tests.conftest import run_ddp_worker

WORKER = Path(__file__).with_name("ddp_fit.py")


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_parameters_and_zero_patterns(tmp_path):
    rank0, rank1 = run_ddp_worker(WORKER, tmp_path)
    assert rank0.keys() == rank1.keys()
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
    convs = [v for k, v in rank0.items() if k.startswith("model.backbone.") and v.dim() == 4]
    dead = sum(int((~live_groups(w, "in_channel")).sum()) for w in convs)
    assert dead > 0, "the prox zeroed groups, and did so identically on both ranks"
