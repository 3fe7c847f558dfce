"""MetaSparsityModule in real (tiny, CPU) Trainer runs: DDP, exact resume, checkpoints, logging."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mtl import MetaSparsityModule
from lightning_mtl.callbacks import SparsityMonitor
from lightning_mtl.sparsity import live_groups
from tests.helpers import (
    META_PRUNING,
    TASKS,
    assert_same_run,
    csv_logger,
    run_ddp_worker,
    tiny_meta_datamodule,
    tiny_meta_module,
    tiny_trainer,
)

# on a small, busy CPU two OpenMP threads per process make these fits 10x slower (1.5 s vs 17 s
# for one epoch measured on 2 cores under load)
pytestmark = pytest.mark.usefixtures("one_thread")


def _module(data, **overrides) -> MetaSparsityModule:
    """A strong outer prox and a weak inner one: some groups die and λ gets a gradient."""
    return tiny_meta_module(data, **{**META_PRUNING, **overrides})


def _trainer(root: Path, **kwargs) -> L.Trainer:
    return tiny_trainer(root, **{"log_every_n_steps": 1, "deterministic": True, **kwargs})


def _dead_groups(state_dict) -> int:
    convs = [v for k, v in state_dict.items() if k.startswith("model.backbone.") and v.dim() == 4]
    return sum(int((~live_groups(w, "in_channel")).sum()) for w in convs)


# -- DDP ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    """The two ranks' saved results of one 2-process gloo fit (tests/workers/meta_ddp_fit.py)."""
    return run_ddp_worker("meta_ddp_fit", tmp_path_factory.mktemp("meta_ddp"))


@pytest.mark.slow
def test_ddp_ranks_adapt_on_their_own_meta_batches_and_stay_identical(ddp_ranks):
    rank0, rank1 = ddp_ranks
    assert rank0["global_step"] == rank1["global_step"] == 4  # 2 epochs of 4 // 2 meta-batches
    # each rank ran its inner loops on its own meta-batches ...
    assert rank0["numbers"] == [0, 2, 4, 6]
    assert rank1["numbers"] == [1, 3, 5, 7]
    assert all(a != b for a, b in zip(rank0["steps"], rank1["steps"], strict=True))
    # ... and the averaged outer gradients (and BN stats) keep θ, ρ and the stats identical
    state0, state1 = rank0["state_dict"], rank1["state_dict"]
    assert state0.keys() == state1.keys()
    floats = [k for k, v in state0.items() if v.is_floating_point()]
    assert "rho" in floats and any(k.endswith("running_mean") for k in floats)
    for name in floats:
        assert torch.equal(state0[name], state1[name]), name
    assert not torch.equal(state0["rho"], rank0["rho_start"]), "λ was learned"
    assert _dead_groups(state0) > 0, "the outer prox zeroed groups, identically on both ranks"


@pytest.mark.slow
def test_ddp_ranks_count_bn_batches_identically(ddp_ranks):
    state0, state1 = ddp_ranks[0]["state_dict"], ddp_ranks[1]["state_dict"]
    differ = [k for k, v in state0.items() if not torch.equal(v, state1[k])]
    assert not differ, differ


# -- exact resume -------------------------------------------------------------------------------


def _fit(root: Path, max_epochs: int, ckpt_path: str | None = None, callbacks=(), **trainer):
    L.seed_everything(3)
    data = tiny_meta_datamodule()
    module = _module(data, lambda_init=0.3)  # some, not all, groups die in 16 steps
    trainer = _trainer(root, max_epochs=max_epochs, callbacks=list(callbacks), **trainer)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


def _check_resume(tmp_path: Path) -> None:
    """4 epochs in one go == 2 epochs, checkpoint, 2 more epochs in a new Trainer."""
    straight = _fit(tmp_path / "straight", 4)
    checkpoints = tmp_path / "split" / "checkpoints"
    _fit(tmp_path / "split", 2, callbacks=[ModelCheckpoint(dirpath=checkpoints, save_last=True)])
    resumed = _fit(tmp_path / "split", 4, ckpt_path=str(checkpoints / "last.ckpt"))
    assert straight[1].global_step == 16
    assert_same_run(straight, resumed)
    assert straight[0].rho.item() != pytest.approx(torch.tensor(0.3).log().item()), "λ moved"
    assert 0 < _dead_groups(straight[0].state_dict()) < 243  # 243 groups in the tiny backbone


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    """RNG streams (dropout), optimizer state, λ, BN stats and the sampler's epoch (Lightning
    builds the resumed epoch's iterator before it calls set_epoch) all continue."""
    _check_resume(tmp_path)


# -- checkpoints --------------------------------------------------------------------------------


def test_load_from_checkpoint_round_trips_hparams_and_lambda(tmp_path):
    L.seed_everything(0)
    data = tiny_meta_datamodule()
    module = _module(data, inner_steps=2, per_layer_lambda=True)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(module, data)
    path = tmp_path / "meta.ckpt"
    trainer.save_checkpoint(path)
    # its own arguments only: not the parent's (weighting, lambda_, …), not the optimizer
    assert not {"weighting", "lambda_", "penalty", "optimizer"} & set(module.hparams)

    loaded = MetaSparsityModule.load_from_checkpoint(path)
    for key in ("lambda_init", "inner_steps", "inner_lr", "rho_lr", "per_layer_lambda"):
        assert loaded.hparams[key] == module.hparams[key], key
    assert loaded.hparams.inner_steps == 2 and loaded.hparams.per_layer_lambda
    assert list(loaded.tasks) == list(TASKS)
    assert loaded.current_lambda == module.current_lambda
    assert loaded.current_lambda != pytest.approx(1.0, abs=1e-6), "λ was learned"
    for name, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


# -- logging ------------------------------------------------------------------------------------


def test_fit_with_validation_logs_the_task_metrics_and_sparsity(tmp_path):
    L.seed_everything(0)
    data = tiny_meta_datamodule()
    module = _module(data)
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        logger=csv_logger(tmp_path),
        callbacks=[SparsityMonitor()],
        enable_checkpointing=False,
    )
    trainer.fit(module, data)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    keys = set(rows[0])
    assert any(float(r["meta/rho_grad"]) > 0 for r in rows if r["meta/rho_grad"])
    expected = {"train/loss", "lambda", "meta/inner_loss", "meta/rho_grad", "val/loss"}
    expected |= {"sparsity/group_pct", "sparsity/param_pct", "sparsity/layer/conv1"}
    expected |= {f"val/{task}/loss" for task in TASKS}
    expected |= {"val/seg/miou", "val/seg/pixel_acc", "val/depth/abs_err", "val/depth/rmse"}
    expected |= {"val/normal/cos_sim", "val/normal/median_angle"}
    assert expected <= keys, expected - keys
    assert any(k.startswith("meta/query/") for k in keys)
    group_pct = float(trainer.callback_metrics["sparsity/group_pct"])
    assert 0 < group_pct < 100
    assert (tmp_path / "sparsity.png").stat().st_size > 0
