"""A NaN/inf loss or gradient stops training, names the task or parameter and the step, and
leaves the last checkpoint (written before it) intact and finite."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mtl import MultiTaskLightningModule
from lightning_mtl.modules import NonFiniteError
from tests.helpers import tiny_datamodule, tiny_module, tiny_trainer

BAD_STEP = 2


def fit_until_it_breaks(module, data, tmp_path, **trainer_options):
    checkpoints = ModelCheckpoint(tmp_path, every_n_train_steps=1, save_last=True)
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[checkpoints], **trainer_options
    )
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(module, data)
    return str(error.value), tmp_path / "last.ckpt"


def assert_last_checkpoint_is_the_step_before(path):
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["global_step"] == BAD_STEP
    assert all(
        v.isfinite().all() for v in checkpoint["state_dict"].values() if v.is_floating_point()
    )
    MultiTaskLightningModule.load_from_checkpoint(path)  # loads


def test_nan_loss_names_the_task_and_step(tmp_path):
    data = tiny_datamodule()
    module = tiny_module(data)
    depth = module.tasks["depth"]
    loss = type(depth).loss

    def nan_at_bad_step(pred, target):
        value = loss(depth, pred, target)
        return value * float("nan") if module.global_step == BAD_STEP else value

    depth.loss = nan_at_bad_step
    message, last = fit_until_it_breaks(module, data, tmp_path)
    assert f"non-finite loss at step {BAD_STEP}: task(s) {{'depth': nan}}" in message
    assert_last_checkpoint_is_the_step_before(last)


def test_inf_gradient_names_the_parameter_and_step(tmp_path):
    data = tiny_datamodule()
    module = tiny_module(data)
    weight = module.model.heads["seg"][-1].weight

    def blow_up(grad):
        return grad * float("inf") if module.global_step == BAD_STEP else grad

    weight.register_hook(blow_up)
    message, last = fit_until_it_breaks(module, data, tmp_path)
    assert f"non-finite gradient at step {BAD_STEP} in model.heads.seg." in message
    assert_last_checkpoint_is_the_step_before(last)


def test_nan_loss_of_an_accumulated_micro_batch_stops_before_the_step(tmp_path):
    """With 2 micro-batches per optimizer step, a NaN loss in the first is still caught before
    that step's optimizer step (the step's flag, read once there, holds every micro-batch)."""
    data = tiny_datamodule()  # 4 batches: 2 optimizer steps per epoch
    module = tiny_module(data)
    depth = module.tasks["depth"]
    loss = type(depth).loss
    bad_step_losses = []

    def nan_in_first_micro_batch(pred, target):
        value = loss(depth, pred, target)
        if module.global_step != BAD_STEP:
            return value
        bad_step_losses.append(value)
        return value * float("nan") if len(bad_step_losses) == 1 else value

    depth.loss = nan_in_first_micro_batch
    message, last = fit_until_it_breaks(module, data, tmp_path, accumulate_grad_batches=2)
    assert len(bad_step_losses) == 2, "the second micro-batch ran, then the check"
    assert (
        f"non-finite loss at step {BAD_STEP}: task(s) {{'depth': nan}} (micro-batch 1 of 2)"
        in message
    )
    assert_last_checkpoint_is_the_step_before(last)
