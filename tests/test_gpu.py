"""On CUDA (marked `gpu`, skipped without it; `make gpu-check` runs them): a bf16-mixed
channels_last fit with the prox, train-time compaction, a second-order meta-sparsity outer step,
and a resume, each tiny; and the two measurements the GPU check relies on (the CUDA RNG stream
in checkpoints, the host-sync counter of the benchmark)."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mtl import ProxAdamW
from lightning_mtl.benchmarks.timing import host_syncs_per_step
from lightning_mtl.callbacks import TrainTimeCompaction
from lightning_mtl.callbacks.rng_state import rng_states, set_rng_states
from lightning_mtl.sparsity import live_groups
from tests.helpers import (
    META_PRUNING,
    tiny_datamodule,
    tiny_meta_datamodule,
    tiny_meta_module,
    tiny_module,
    tiny_trainer,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CUDA = torch.device("cuda")


def _trainer(root: Path, **overrides) -> L.Trainer:
    """The tiny quiet Trainer on one GPU."""
    return tiny_trainer(root, **{"accelerator": "gpu", "devices": 1, **overrides})


def _proxed_weights(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The weights the prox acts on: the 4-D params of the groups with λ > 0."""
    return [
        p
        for group in optimizer.param_groups
        if group["lambda_"] > 0
        for p in group["params"]
        if p.dim() == 4
    ]


def _channels_last(tensor: torch.Tensor | None) -> bool:
    return tensor is not None and tensor.is_contiguous(memory_format=torch.channels_last)


class ProxedWeightLayout(L.Callback):
    """Per optimizer step: whether the proxed weights and their gradients are channels_last
    CUDA tensors before the step, and the weights still are after it."""

    def __init__(self) -> None:
        self.before: list[bool] = []
        self.after: list[bool] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        weights = _proxed_weights(optimizer)
        self.before.append(
            bool(weights)
            and all(w.is_cuda and _channels_last(w) and _channels_last(w.grad) for w in weights)
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(all(_channels_last(w) for w in _proxed_weights(trainer.optimizers[0])))


def _dead_groups(weights: list[torch.Tensor]) -> int:
    return sum(int((~live_groups(w, "in_channel")).sum()) for w in weights)


def test_bf16_mixed_channels_last_fit_prunes_groups(tmp_path):
    L.seed_everything(0)
    data = tiny_datamodule()
    module = tiny_module(data, lambda_=0.5, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    module.to(memory_format=torch.channels_last)
    layout = ProxedWeightLayout()
    trainer = _trainer(
        tmp_path, precision="bf16-mixed", callbacks=[layout], enable_checkpointing=False
    )
    trainer.fit(module, data)
    assert layout.before and all(layout.before), "the prox acts on channels_last CUDA weights"
    assert all(layout.after), "and leaves them channels_last"
    weights = [w for _, w in module.sparse_weights()]
    assert _dead_groups(weights) > 0, "the prox zeroes whole groups"
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_train_time_compaction_narrows_the_model_on_cuda(tmp_path):
    L.seed_everything(3)
    data = tiny_datamodule()
    module = tiny_module(data, lambda_=0.3, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    params_before = sum(p.numel() for p in module.parameters())
    compaction = TrainTimeCompaction(every_n_epochs=1, dead_for_epochs=1, round_to=None)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[compaction], enable_checkpointing=False)
    trainer.fit(module, data)
    assert trainer.global_step == 3 * len(data.train_dataloader()), "the fit completed"
    assert module.compaction_plan.layers, "compacted while training"
    assert sum(p.numel() for p in module.parameters()) < params_before
    optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert {id(p) for p in optimized} <= {id(p) for p in module.parameters()}, "the new model's"
    assert all(p.is_cuda and bool(torch.isfinite(p).all()) for p in optimized)


def test_second_order_meta_step_learns_lambda_on_cuda(tmp_path):
    L.seed_everything(0)
    data = tiny_meta_datamodule()
    module = tiny_meta_module(data, **META_PRUNING)
    assert not module.hparams.first_order
    rho = module.rho.detach().clone()
    trainer = _trainer(tmp_path, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(module, data)
    assert trainer.global_step > 0
    assert module.rho.is_cuda and bool(torch.isfinite(module.rho).all())
    assert not torch.equal(module.rho.detach().cpu(), rho), "λ moved"


@pytest.fixture
def restores_determinism():
    """Lightning's `deterministic=` sets a process-wide torch flag: put it back afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _resume_fit(root: Path, max_epochs: int, ckpt_path: str | None = None):
    L.seed_everything(3)
    data = tiny_datamodule(num_train=8)  # 2 steps per epoch
    module = tiny_module(data, lambda_=0.05, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    checkpoints = ModelCheckpoint(dirpath=root, save_last=True)
    # deterministic kernels where CUDA has them ("warn": bilinear upsampling's backward has none)
    trainer = _trainer(root, max_epochs=max_epochs, deterministic="warn", callbacks=[checkpoints])
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.usefixtures("restores_determinism")
@pytest.mark.filterwarnings("ignore:.*does not have a deterministic implementation")
def test_resume_on_cuda_continues_the_uninterrupted_fit(tmp_path):
    """2 epochs in one go == 1 epoch, last.ckpt, 1 more in a new Trainer: weights, BN
    statistics, Adam's state and λ. Equal to float rounding, not bit-identical: CUDA's bilinear
    upsampling backward adds with atomics, in no fixed order (a dropout mask drawn from an
    unrestored CUDA stream would differ by whole updates, about lr)."""
    straight_module, straight = _resume_fit(tmp_path / "straight", 2)
    _resume_fit(tmp_path / "split", 1)
    resumed_module, resumed = _resume_fit(tmp_path / "split", 2, str(tmp_path / "split/last.ckpt"))
    assert straight.global_step == resumed.global_step == 4
    # (Adam's `step` counters may live on either device after a load; their values must agree)
    close = functools.partial(torch.testing.assert_close, rtol=1e-4, atol=1e-4, check_device=False)
    close(resumed_module.state_dict(), straight_module.state_dict())
    opt_straight, opt_resumed = straight.optimizers[0], resumed.optimizers[0]
    assert opt_resumed.state_dict()["param_groups"] == opt_straight.state_dict()["param_groups"]
    close(opt_resumed.state_dict()["state"], opt_straight.state_dict()["state"])


def test_checkpointed_rng_states_restore_the_cuda_stream():
    torch.cuda.init()
    states = rng_states()
    first = torch.rand(8, device=CUDA)
    set_rng_states(states)
    assert torch.equal(torch.rand(8, device=CUDA), first), "dropout masks repeat after a resume"


def test_the_host_sync_counter_sees_syncs():
    """The counter behind the GPU check's `prox_host_syncs_per_step`."""
    x = torch.ones(1024, device=CUDA)
    assert host_syncs_per_step(lambda: x.add_(1), CUDA) == 0
    assert host_syncs_per_step(lambda: x.sum().item(), CUDA) >= 1
