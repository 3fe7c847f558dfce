"""The library's part of a training step reads the device once per optimizer step (the step's
non-finite flag), and validation once per epoch (the non-finite predictions' counts): counted on
CPU as host reads of tensor values, and on CUDA as synchronizing operations."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_mtl.modules import NonFiniteWarning
from tests.helpers import (
    count_cuda_syncs,
    count_scalar_reads,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_training_step_reads_the_device_once(tmp_path, accumulate):
    data = tiny_datamodule()  # 16 training images, batch 4: 4 batches
    module = tiny_module(data, lambda_=0.1)  # the prox runs too
    trainer = tiny_trainer(
        tmp_path,
        limit_val_batches=0,
        enable_checkpointing=False,
        accumulate_grad_batches=accumulate,
    )
    with count_scalar_reads() as reads:
        trainer.fit(module, data)
    assert trainer.global_step == 4 // accumulate
    assert len(reads.library) <= trainer.global_step, reads.library


def _nan_head(module, key):
    """Every prediction of `key` is NaN: the last bias of its head is."""
    *_, bias = (p for n, p in module.model.heads[key].named_parameters() if n.endswith("bias"))
    with torch.no_grad():
        bias.fill_(float("nan"))


@pytest.mark.parametrize("non_finite", [False, True])
def test_validation_reads_the_device_once_per_epoch(tmp_path, non_finite):
    """As many reads for 3 batches as for 1 (none per batch); besides the metrics' own
    `compute` (the median angle's, once per epoch) one, to warn about a NaN/inf prediction."""
    reads_by_batches = {}
    for batches in (1, 3):
        data = tiny_datamodule(num_val=4 * batches)
        module = tiny_module(data)
        if non_finite:
            _nan_head(module, "normal")
        with warnings.catch_warnings(record=True) as caught, count_scalar_reads() as reads:
            warnings.simplefilter("always")
            tiny_trainer(tmp_path).validate(module, data, verbose=False)
        assert any(w.category is NonFiniteWarning for w in caught) == non_finite
        reads_by_batches[batches] = reads.library
    assert len(reads_by_batches[3]) == len(reads_by_batches[1]), reads_by_batches
    outside_metrics = [r for r in reads_by_batches[3] if not r.startswith("lightning_mtl/metrics")]
    assert len(outside_metrics) <= 1, outside_metrics


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_training_step_syncs_once(tmp_path):
    """Under `torch.cuda.set_sync_debug_mode("warn")`: a fit of 6 steps makes at most 4 more
    synchronizing operations inside library calls than one of 2 (the fit's setup cancels)."""

    def library_syncs(steps: int) -> list[str]:
        data = tiny_datamodule(num_train=4 * steps)
        module = tiny_module(data, lambda_=0.1)
        trainer = tiny_trainer(
            tmp_path, accelerator="gpu", limit_val_batches=0, enable_checkpointing=False
        )
        with count_cuda_syncs() as syncs:
            trainer.fit(module, data)
        assert trainer.global_step == steps
        return syncs.library

    few, more = library_syncs(2), library_syncs(6)
    assert len(more) - len(few) <= 6 - 2, more
