"""MultiTaskLightningModule in real (tiny, CPU) Trainer runs."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mtl import ProxAdamW, register_task, sparsity_stats
from lightning_mtl.callbacks import SparsityMonitor
from lightning_mtl.sparsity import kernels
from tests.helpers import (
    ForegroundTask,
    assert_same_run,
    csv_logger,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
)


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    """2 deterministic epochs, every step logged to tmp_path/metrics.csv."""
    logging = {"logger": csv_logger(tmp_path), "log_every_n_steps": 1}
    return tiny_trainer(tmp_path, **{"max_epochs": 2, "deterministic": True, **logging, **kwargs})


def _metric_keys(run_dir: Path) -> set[str]:
    with open(run_dir / "metrics.csv") as f:
        return set(next(csv.reader(f)))


def test_fit_logs_the_stable_keys_and_sparsifies(tmp_path):
    L.seed_everything(0)
    data = tiny_datamodule()
    model = tiny_module(data, lambda_=0.5, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    trainer = _trainer(tmp_path, callbacks=[SparsityMonitor()])
    trainer.fit(model, data)

    keys = _metric_keys(tmp_path)
    expected = {
        "train/loss",
        "lambda",
        "val/loss",
        "sparsity/group_pct",
        "sparsity/param_pct",
        "sparsity/layer/conv1",
        "sparsity/layer/layer3.0.conv1",
    }
    for task in ("seg", "depth", "normal"):
        expected |= {f"train/{task}/loss", f"val/{task}/loss", f"weights/{task}"}
    expected |= {"val/seg/miou", "val/seg/iou", "val/seg/pixel_acc", "val/depth/abs_err"}
    expected |= {"val/depth/rel_err", "val/depth/rmse", "val/normal/cos_sim"}
    expected |= {"val/normal/median_angle", "val/normal/pct_11_25"}
    assert expected <= keys, expected - keys
    assert (tmp_path / "sparsity.png").stat().st_size > 0
    stats = sparsity_stats(model.sparse_weights())
    assert stats.group_pct > 0
    assert trainer.callback_metrics["sparsity/group_pct"] == pytest.approx(stats.group_pct)
    assert float(model.weighting.log_vars.abs().sum()) > 0, "uncertainty weights are trained"


def test_resume_continues_exactly(tmp_path):
    """4 epochs in one go == 2 epochs, checkpoint, 2 more epochs in a new Trainer."""

    def run(root: Path, max_epochs: int, ckpt_path: str | None = None):
        L.seed_everything(3)
        data = tiny_datamodule()
        model = tiny_module(data, lambda_=0.05, optimizer=functools.partial(ProxAdamW, lr=1e-2))
        ckpt = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
        trainer = _trainer(root, max_epochs=max_epochs, callbacks=[ckpt])
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return model, trainer

    straight, straight_trainer = run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)
    resumed, resumed_trainer = run(
        tmp_path / "split", 4, ckpt_path=str(tmp_path / "split" / "checkpoints" / "last.ckpt")
    )
    assert_same_run((straight, straight_trainer), (resumed, resumed_trainer))
    assert sparsity_stats(straight.sparse_weights()).group_pct > 0


@pytest.mark.parametrize("kernel", ["eager", "compiled", "triton"])
def test_prox_runs_once_per_optimizer_step_under_accumulation(tmp_path, monkeypatch, kernel):
    """The eager `apply_prox`, or a fused kernel's pass over the sparse convs' group (the
    Triton kernel in Triton's interpreter: a real fit with it)."""
    calls = []
    if kernel == "eager":
        original = ProxAdamW.apply_prox
        monkeypatch.setattr(ProxAdamW, "apply_prox", lambda self: calls.append(1) or original(self))
    else:
        module = kernels.adamw_prox if kernel == "compiled" else kernels.triton_adamw_prox
        fused = module.adamw_prox_
        monkeypatch.setattr(
            module, "adamw_prox_", lambda *a, **k: calls.append(1) or fused(*a, **k)
        )
    data = tiny_datamodule()  # 16 train images, batch 4: 4 batches, 2 optimizer steps per epoch
    optimizer = functools.partial(ProxAdamW, kernel=kernel)
    model = tiny_module(data, lambda_=0.1, optimizer=optimizer)
    trainer = _trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(model, data)
    assert trainer.global_step == 4
    assert len(calls) == 4


def test_prox_start_epoch_keeps_the_first_epochs_dense(tmp_path):
    data = tiny_datamodule()
    model = tiny_module(
        data, lambda_=5.0, prox_start_epoch=1, optimizer=functools.partial(ProxAdamW, lr=1e-2)
    )
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, data)
    assert sparsity_stats(model.sparse_weights()).group_pct == 0
    assert model.current_lambda == 0.0
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, data)
    assert sparsity_stats(model.sparse_weights()).group_pct > 0
    assert model.current_lambda == 5.0


def test_param_groups_are_the_modules_and_overridable():
    data = tiny_datamodule()
    model = tiny_module(
        data, lambda_=1e-3, param_groups={"heads": {"lr": 5e-3, "weight_decay": 0.1}}
    )
    groups = {g["name"]: g for g in model.optimizer_param_groups()}
    assert list(groups) == ["sparse_convs", "backbone", "heads", "loss_weights"]
    assert groups["sparse_convs"]["lambda_"] == 1e-3
    assert all(g["lambda_"] == 0 for n, g in groups.items() if n != "sparse_convs")
    assert groups["heads"]["lr"] == 5e-3 and groups["heads"]["weight_decay"] == 0.1
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(model.parameters()))
    assert len(groups["sparse_convs"]["params"]) == len(model.model.backbone.conv_layers())
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, ProxAdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-4, 5e-3, 1e-4]


@pytest.mark.usefixtures("registries")
def test_a_new_task_by_subclassing_trains(tmp_path):
    register_task("fg")(ForegroundTask)
    data = tiny_datamodule(tasks=("seg", "depth"))
    model = tiny_module(data, tasks=("depth", "fg"))
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, data)
    assert "val/fg/fg_acc" in trainer.callback_metrics
    assert 0.0 <= float(trainer.callback_metrics["val/fg/fg_acc"]) <= 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tasks": ["seg", "sonar"]}, r"unknown task 'sonar'.*provides"),
        ({"lambda_": -1e-3}, r"lambda_ must be >= 0"),
        (
            {"prox_metric": "fista"},
            r"unknown prox_metric 'fista'; allowed: \['adaptive', 'euclidean', 'uncorrected'\]",
        ),
        ({"penalty": "l0"}, r"unknown penalty 'l0'"),
        ({"group_by": "kernel"}, r"unknown group_by 'kernel'"),
        ({"sparse_layers": r"layer9\."}, r"matches no conv layer; the layers are \['conv1'"),
        ({"param_groups": {"decoder": {"lr": 1.0}}}, r"unknown groups \['decoder'\]"),
        ({"weighting": "gradnorm"}, r"unknown loss weighting 'gradnorm'"),
        ({"backbone": "resnet200"}, r"unknown backbone .resnet200.*resnet152"),
    ],
)
def test_bad_configuration_fails_at_start_up(overrides, message):
    data = tiny_datamodule()
    with pytest.raises(ValueError, match=message):
        tiny_module(data, **overrides)


def test_task_the_datamodule_does_not_provide_is_rejected():
    from lightning_mtl import MultiTaskLightningModule

    targets = {k: v for k, v in tiny_datamodule().targets.items() if k != "normal"}
    with pytest.raises(
        ValueError, match=r"reads batch key 'normal', which the datamodule does not"
    ):
        MultiTaskLightningModule(tasks=["seg", "normal"], targets=targets)


def test_lambda_without_a_prox_optimizer_is_rejected():
    model = tiny_module(tiny_datamodule(), lambda_=1e-3, optimizer=torch.optim.SGD)
    with pytest.raises(ValueError, match="needs an optimizer that applies the prox"):
        model.configure_optimizers()
