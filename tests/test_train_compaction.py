"""Train-time compaction (`TrainTimeCompaction`): the compacted model computes what the sparse one
did, the optimizer continues on the kept entries exactly, plans compose, resumed runs continue
exactly, statistics count against the original architecture."""

from __future__ import annotations

import copy
import csv
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_mtl import ProxAdamW, sparsity_stats
from lightning_mtl.callbacks import SparsityMonitor, TrainTimeCompaction
from lightning_mtl.callbacks.train_compaction import compact_with_optimizer
from lightning_mtl.models.compacted import load_compacted
from lightning_mtl.pipelines.compact import compact_checkpoint
from lightning_mtl.sparsity import compact, live_groups
from lightning_mtl.sparsity.plan import CompactionPlan
from tests.helpers import (
    assert_same_run,
    csv_logger,
    run_ddp_worker,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
)

LAMBDA = 0.3  # with lr 1e-2 most groups of the tiny model die within two epochs
COMPACTION = {"every_n_epochs": 1, "dead_for_epochs": 1, "round_to": None}


def _fit(root: Path, max_epochs: int, callbacks=(), ckpt_path: str | None = None, **trainer):
    L.seed_everything(3)
    data = tiny_datamodule()
    module = tiny_module(data, lambda_=LAMBDA, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    trainer = tiny_trainer(
        root, max_epochs=max_epochs, deterministic=True, callbacks=list(callbacks), **trainer
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer, data


def _seeded(module: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return module(images)


def _kept_entries(model: torch.nn.Module, plan: CompactionPlan) -> dict[str, torch.Tensor]:
    """Per parameter of the dense `model`: a bool mask of the entries `plan` keeps (the plan
    applied to a copy whose parameters hold their own flat indices)."""
    shadow = copy.deepcopy(model)
    with torch.no_grad():
        for p in shadow.parameters():
            p.data = torch.arange(p.numel(), dtype=torch.float64).view(p.shape)
    plan.apply(shadow)
    masks = {}
    for (name, p), (_, kept) in zip(
        model.named_parameters(), shadow.named_parameters(), strict=True
    ):
        mask = torch.zeros(p.numel(), dtype=torch.bool)
        mask[kept.detach().long().flatten()] = True
        masks[name] = mask.view(p.shape)
    return masks


def _sliced(model: torch.nn.Module, plan: CompactionPlan) -> dict[str, torch.Tensor]:
    shadow = copy.deepcopy(model)
    plan.apply(shadow)
    return dict(shadow.named_parameters())


def test_compacted_model_computes_the_same_and_steps_as_the_sparse_one(tmp_path):
    """At the moment of compaction the outputs are the sparse model's; one more optimizer step
    on the compacted model equals the sparse model's step on the kept entries, once the removed
    entries (which fed nothing) are zero in the sparse model too."""
    module, trainer, data = _fit(tmp_path, 2)
    trained_opt = trainer.optimizers[0]
    module._trainer = None
    sparse, sparse_opt = copy.deepcopy((module, trained_opt))
    compacted, optimizer = copy.deepcopy((module, trained_opt))
    stats_before = sparsity_stats(sparse.sparse_weights(), "in_channel")
    report, optimizer = compact_with_optimizer(compacted, optimizer, None, None)
    assert report.macs_after < report.macs_before and report.plan.layers

    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    for mode in (False, True):
        sparse.train(mode), compacted.train(mode)
        with torch.no_grad():  # the same dropout masks for both
            a = _seeded(sparse, batch["image"])
            b = _seeded(compacted, batch["image"])
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)

    # the removed entries fed nothing: zero them (and their momentum) in the sparse model
    masks = _kept_entries(sparse.model, report.plan)
    with torch.no_grad():
        for name, p in sparse.model.named_parameters():
            p.mul_(masks[name])
            state = sparse_opt.state.get(p, {})
            if "exp_avg" in state:
                state["exp_avg"].mul_(masks[name])
    for m, opt in ((sparse, sparse_opt), (compacted, optimizer)):
        m.train()
        opt.zero_grad()
        torch.manual_seed(0)
        _, losses = m.task_losses(batch)
        m.weighting(losses).backward()
        opt.step()
    expected = _sliced(sparse.model, report.plan)
    for name, p in compacted.model.named_parameters():
        torch.testing.assert_close(
            p, expected[name], rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}"
        )
        state, dense_p = optimizer.state[p], dict(sparse.model.named_parameters())[name]
        assert state["step"] == sparse_opt.state[dense_p]["step"]
    # statistics against the original architecture: a removed group counts as zero
    after = sparsity_stats(compacted.sparse_weights(original_shapes=True), "in_channel")
    assert after.num_groups == stats_before.num_groups
    assert after.num_params == stats_before.num_params


def test_plans_compose_into_the_plan_of_one_compaction():
    """Compacting in two rounds (the first kept from one conv's inputs by `removable`) removes
    what one round removes; the composed plan rebuilds the same architecture and weights from
    the dense model."""
    dense = tiny_module(tiny_datamodule()).model
    convs = dense.backbone.conv_layers()
    with torch.no_grad():
        for _, conv in convs[1:]:
            conv.weight[:, ::2] = 0  # every second input group of every conv but the stem
    once, twice = copy.deepcopy(dense), copy.deepcopy(dense)
    plan_once = compact(once, round_to=None).plan
    name, conv = convs[2]
    keep = {f"backbone.{name}": torch.zeros(conv.in_channels, dtype=torch.bool)}
    first = compact(twice, round_to=None, removable=keep).plan
    assert "in" not in first.layers.get(f"backbone.{name}", {}), "removable keeps them"
    assert "in" in plan_once.layers[f"backbone.{name}"]
    plan_twice = first.compose(compact(twice, round_to=None).plan)
    assert plan_twice == plan_once
    rebuilt = copy.deepcopy(dense)
    plan_twice.apply(rebuilt)
    for (key, a), (_, b) in zip(
        once.state_dict().items(), rebuilt.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key
    weight = dict(twice.backbone.conv_layers())[name].weight
    expanded = plan_twice.expand(f"backbone.{name}", weight, conv.weight.shape)
    kept = plan_twice.expand(f"backbone.{name}", torch.ones_like(weight), conv.weight.shape)
    assert int(kept.sum()) == weight.numel()
    assert torch.equal(expanded, conv.weight * kept), "the kept entries go back in place"


def test_a_run_with_train_time_compaction_resumes_exactly(tmp_path):
    """4 epochs in one go == 2 epochs, checkpoint, 2 more in a new Trainer: the checkpoint's
    plan rebuilds the compacted architecture, the callback's counts and the optimizer state
    continue; the statistics count against the original architecture."""

    def run(root: Path, max_epochs: int, ckpt_path: str | None = None):
        callbacks = [
            TrainTimeCompaction(**COMPACTION),
            SparsityMonitor(log_layers=False),
            ModelCheckpoint(dirpath=root / "checkpoints", save_last=True),
        ]
        logging = {"logger": csv_logger(root), "log_every_n_steps": 1}
        return _fit(root, max_epochs, callbacks, ckpt_path, **logging)

    straight, straight_trainer, _ = run(tmp_path / "straight", 4)
    split, _, _ = run(tmp_path / "split", 2)
    assert split.compaction_plan.layers, "the checkpoint to resume from holds a compacted model"
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    assert (
        torch.load(last, weights_only=False)["compaction_plan"] == split.compaction_plan.to_data()
    )
    resumed, resumed_trainer, _ = run(tmp_path / "split", 4, ckpt_path=str(last))

    assert straight.compaction_plan.layers != split.compaction_plan.layers, "compacted again"
    assert resumed.compaction_plan == straight.compaction_plan
    assert_same_run((straight, straight_trainer), (resumed, resumed_trainer))

    # the checkpoint compacts further into a file that loads, with the composed plan
    compacted = compact_checkpoint(str(last), str(tmp_path / "out"), image_size=(32, 32))
    loaded = load_compacted(compacted.files[0])
    split_net = type(split).load_from_checkpoint(last, map_location="cpu").model.eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = split_net(images), loaded(images)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)

    dense = tiny_module(tiny_datamodule())
    stats = sparsity_stats(straight.sparse_weights(original_shapes=True), "in_channel")
    assert stats.num_groups == sparsity_stats(dense.sparse_weights(), "in_channel").num_groups
    with open(tmp_path / "straight" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["sparsity/group_pct"]]
    assert float(rows[-1]["sparsity/group_pct"]) == pytest.approx(stats.group_pct)


def test_the_monitor_counts_groups_that_revive(tmp_path):
    """Without compaction: `sparsity/revived_groups` = groups zero at one validation and live
    at the next, counted here from the weights each validation saw."""

    class ZeroGroups(Callback):
        def __init__(self) -> None:
            self.seen: list[dict[str, torch.Tensor]] = []

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            weights = pl_module.sparse_weights()
            self.seen.append({n: ~live_groups(w, "in_channel") for n, w in weights})

    record = ZeroGroups()
    callbacks = [SparsityMonitor(log_layers=False), record]
    logging = {"logger": csv_logger(tmp_path), "log_every_n_steps": 1, "num_sanity_val_steps": 0}
    L.seed_everything(3)
    data = tiny_datamodule()
    # a λ at which groups die and come back: the prox starts strong, the gradients win later
    module = tiny_module(data, lambda_=0.08, optimizer=functools.partial(ProxAdamW, lr=3e-2))
    tiny_trainer(tmp_path, max_epochs=5, callbacks=callbacks, **logging).fit(module, data)
    expected = [0] + [
        sum(int((before[n] & ~after[n]).sum()) for n in after)
        for before, after in zip(record.seen, record.seen[1:], strict=False)
    ]
    with open(tmp_path / "metrics.csv") as f:
        logged = [
            float(r["sparsity/revived_groups"])
            for r in csv.DictReader(f)
            if r.get("sparsity/revived_groups")
        ]
    assert logged == expected
    assert sum(expected) > 0, "the run has groups that revive"


@pytest.mark.slow
def test_ddp_ranks_stay_bit_identical_after_a_compaction(tmp_path):
    rank0, rank1 = run_ddp_worker("ddp_fit", tmp_path, "--train-compaction")
    assert rank0["compaction_plan"], "the run compacted"
    assert rank0["compaction_plan"] == rank1["compaction_plan"]
    state = rank0["state_dict"]
    assert state.keys() == rank1["state_dict"].keys()
    for name, value in state.items():
        assert torch.equal(value, rank1["state_dict"][name]), name


def test_train_time_compaction_refuses_what_it_cannot_compact(tmp_path):
    data = tiny_datamodule()
    module = tiny_module(data, lambda_=LAMBDA, group_by="out_channel")
    trainer = tiny_trainer(tmp_path, callbacks=[TrainTimeCompaction()])
    with pytest.raises(ValueError, match="group_by is 'out_channel'"):
        trainer.fit(module, data)
    with pytest.raises(ValueError, match="every_n_epochs and dead_for_epochs must be ≥ 1"):
        TrainTimeCompaction(dead_for_epochs=0)


def test_compaction_keeps_the_lr_schedule_and_the_warm_up_lambda(tmp_path):
    """A StepLR halving lr every epoch and the dense warm-up (λ = 0 in epoch 0) go on across
    compactions: the scheduler drives the new optimizer, λ and lr are the uncompacted run's."""
    schedule = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)

    def fit(callbacks):
        L.seed_everything(3)
        data = tiny_datamodule()
        module = tiny_module(
            data,
            lambda_=LAMBDA,
            prox_start_epoch=1,
            optimizer=functools.partial(ProxAdamW, lr=1e-2),
            lr_scheduler=schedule,
        )
        trainer = tiny_trainer(tmp_path, max_epochs=4, callbacks=callbacks)
        trainer.fit(module, data)
        return module, trainer

    compacted, trainer = fit([TrainTimeCompaction(**COMPACTION)])
    _, dense_trainer = fit([])
    assert compacted.compaction_plan.layers
    (config,) = trainer.lr_scheduler_configs
    assert config.scheduler.optimizer is trainer.optimizers[0]
    groups, dense_groups = (
        trainer.optimizers[0].param_groups,
        dense_trainer.optimizers[0].param_groups,
    )
    assert [g["lr"] for g in groups] == [g["lr"] for g in dense_groups] == [1e-2 / 16] * 4
    assert [g["lambda_"] for g in groups] == [g["lambda_"] for g in dense_groups]
    assert groups[0]["lambda_"] == LAMBDA
