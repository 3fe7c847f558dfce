"""DDP on 2 CPU processes (gloo): the prox keeps every rank's parameters bit-identical, metrics
of an uneven validation split reduce to the single-process values, and `sync_batchnorm` keeps
the BatchNorm statistics of ranks that saw different data identical."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler, SequentialSampler, default_collate

from datamodules.meta import MetaTaskDataModule
from lightning_mtl.sparsity import live_groups
from tests.helpers import ddp_fit_setup, run_ddp_worker, tiny_datamodule, tiny_trainer


@pytest.mark.slow
@pytest.mark.parametrize("sync_batchnorm", [False, True], ids=["bn", "sync_bn"])
def test_ddp_fit_and_uneven_validation(tmp_path, sync_batchnorm):
    rank0, rank1 = run_ddp_worker("ddp_fit", tmp_path, *(["--sync-batchnorm"] * sync_batchnorm))

    # the prox keeps parameters and zero patterns identical on both ranks
    state = rank0["state_dict"]
    assert state.keys() == rank1["state_dict"].keys()
    for name, value in state.items():
        assert torch.equal(value, rank1["state_dict"][name]), name
    convs = [v for k, v in state.items() if k.startswith("model.backbone.") and v.dim() == 4]
    dead = sum(int((~live_groups(w, "in_channel")).sum()) for w in convs)
    assert dead > 0, "the prox zeroed groups, and did so identically on both ranks"

    # the ranks trained on different data; their BatchNorm statistics after the last step
    # agree only when synced (the epoch-end validation then broadcasts rank 0's either way)
    assert len(rank0["train_batches"]) == len(rank1["train_batches"]) > 0
    assert set(rank0["train_batches"]).isdisjoint(rank1["train_batches"])
    bn0, bn1 = rank0["bn_after_last_step"], rank1["bn_after_last_step"]
    assert bn0 and bn0.keys() == bn1.keys()
    same = [torch.equal(bn0[k], bn1[k]) for k in bn0]
    if sync_batchnorm:
        assert set(rank0["bn_converted"]) == {"SyncBatchNorm"}, "Lightning converted every BN"
        assert len(rank0["bn_converted"]) == len(rank0["bn_classes"]) == len(bn0) // 2
        assert all(same), "synced BatchNorm statistics are identical on both ranks"
    else:
        assert set(rank0["bn_classes"]) == {"BatchNorm2d"}
        assert not all(same), "unsynced BatchNorm statistics follow each rank's own batches"

    # validation on 9 samples: rank 0 ran 5 in 2 batches, rank 1 ran 4 in 1 batch, each once
    assert (rank0["validated"], rank1["validated"]) == ([4, 1], [4])
    ddp_metrics = rank0["val_metrics"]
    assert ddp_metrics == rank1["val_metrics"], "every rank logs the reduced value"
    assert {"val/loss", "val/seg/miou", "val/depth/abs_err", "val/normal/mean_angle"} <= set(
        ddp_metrics
    )
    # … and the reduced metrics are those of one process validating the whole split
    data, model = ddp_fit_setup()
    model.load_state_dict(state)
    (single,) = tiny_trainer().validate(model, data, verbose=False)
    assert single.keys() == ddp_metrics.keys()
    losses = {name for name in single if name.endswith("loss")}
    for name in single.keys() - losses:
        assert ddp_metrics[name] == pytest.approx(single[name], rel=1e-6, abs=1e-6), name
    # the losses are means of per-batch losses weighted by batch size, and a batch's loss is a
    # mean over its valid pixels: they depend on how the split was batched
    dataset = data.datasets["val"]
    for batches, logged in (
        ([[0, 2, 4, 6], [8], [1, 3, 5, 7]], ddp_metrics),
        ([[0, 1, 2, 3], [4, 5, 6, 7], [8]], single),
    ):
        expected = _batch_weighted_losses(model, dataset, batches)
        assert expected.keys() == losses
        for name in losses:
            assert logged[name] == pytest.approx(expected[name], rel=1e-6), name


def _batch_weighted_losses(model, dataset, batches: list[list[int]]) -> dict[str, float]:
    """The val losses of `model` as the mean of the losses of `batches` of `dataset`, weighted
    by batch size."""
    sums: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        for indices in batches:
            _, losses = model.task_losses(default_collate([dataset[i] for i in indices]))
            named = {"val/loss": sum(losses.values())}
            named |= {f"val/{key}/loss": loss for key, loss in losses.items()}
            for name, loss in named.items():
                sums[name] = sums.get(name, 0.0) + float(loss) * len(indices)
    count = sum(len(indices) for indices in batches)
    return {name: total / count for name, total in sums.items()}


def _sampler(datamodule, split: str, world_size: int, rank: int):
    datamodule.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    return getattr(datamodule, f"{split}_dataloader")().sampler


@pytest.mark.parametrize("meta", [False, True], ids=["multitask", "meta"])
@pytest.mark.parametrize("split", ["val", "test", "predict"])
def test_eval_loaders_split_ranks_without_repeating(split, meta):
    """Under a distributed trainer the eval loaders give every sample to exactly one rank
    (no padding by repetition, which would count samples twice in the metrics), also through
    `MetaTaskDataModule`, which delegates them; alone they are plain sequential loaders."""

    def datamodule():
        base = tiny_datamodule(None, num_val=7, num_test=5)
        dm = MetaTaskDataModule(base, ["seg", "depth"], meta_batch_size=2) if meta else base
        dm.setup("validate" if split == "val" else split)
        return dm

    n = {"val": 7, "test": 5, "predict": 5}[split]
    assert isinstance(getattr(datamodule(), f"{split}_dataloader")().sampler, SequentialSampler)
    assert isinstance(_sampler(datamodule(), split, 1, 0), SequentialSampler)
    seen = []
    for rank in range(2):
        sampler = _sampler(datamodule(), split, 2, rank)
        assert isinstance(sampler, UnrepeatedDistributedSampler)
        assert isinstance(sampler, DistributedSampler), "so Lightning keeps it"
        indices = list(sampler)
        assert len(indices) == len(sampler) == (n + 1 - rank) // 2
        seen += indices
    assert sorted(seen) == list(range(n))
