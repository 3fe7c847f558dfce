"""Meta-batches for meta-sparsity: task combinations, deterministic draws, DDP-disjoint sampling."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from datamodules import MetaTaskDataModule, SyntheticDataModule, task_combinations
from datamodules.meta import MetaBatchDataset, MetaBatchSampler
from tests.helpers import TASKS, TINY_DATA, tiny_datamodule


def wrapped(tasks: tuple[str, ...] | None = None, **overrides) -> SyntheticDataModule:
    """Tiny synthetic data of 16×16 images, by default carrying every target, as
    `MetaTaskDataModule` wants it."""
    return tiny_datamodule(tasks, **{"image_size": (16, 16), **overrides})


class IndexDataset(Dataset):
    """Sample `i` is {"image": i}, so a batch says which indices it holds."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.tensor(index)}


def meta_dataset(n: int = 16, **overrides) -> MetaBatchDataset:
    options = {
        "combinations": task_combinations(TASKS),
        "meta_batch_size": 3,
        "support_size": 4,
        "query_size": 5,
        "seed": 0,
        "num_meta_batches": 10,
    }
    return MetaBatchDataset(IndexDataset(n), **{**options, **overrides})


def test_task_combinations_order():
    assert task_combinations(TASKS) == [
        ("seg",),
        ("depth",),
        ("normal",),
        ("seg", "depth"),
        ("seg", "normal"),
        ("depth", "normal"),
        ("seg", "depth", "normal"),
    ]
    assert task_combinations(TASKS, min_size=2) == [
        ("seg", "depth"),
        ("seg", "normal"),
        ("depth", "normal"),
        ("seg", "depth", "normal"),
    ]


@pytest.mark.parametrize(
    ("tasks", "min_size", "match"),
    [
        ((), 1, "must not be empty"),
        (("seg", "depth", "seg"), 1, r"\['seg'\] more than once"),
        (TASKS, 0, "min_size must lie in \\[1, 3\\].*got 0"),
        (TASKS, 4, "min_size must lie in \\[1, 3\\].*got 4"),
        ("seg", 1, "not the string 'seg'"),
    ],
)
def test_task_combinations_errors(tasks, min_size, match):
    with pytest.raises(ValueError, match=match):
        task_combinations(tasks, min_size)


def test_meta_batch_is_deterministic_per_number():
    data = meta_dataset()
    first, again, other = data[7], meta_dataset()[7], data[8]
    assert len(first) == 3
    for a, b in zip(first, again, strict=True):
        assert a["tasks"] == b["tasks"]
        assert torch.equal(a["support"]["image"], b["support"]["image"])
        assert torch.equal(a["query"]["image"], b["query"]["image"])
    drawn = [(m["tasks"], m["support"]["image"].tolist()) for m in first]
    assert drawn != [(m["tasks"], m["support"]["image"].tolist()) for m in other]
    assert drawn != [(m["tasks"], m["support"]["image"].tolist()) for m in meta_dataset(seed=1)[7]]


def test_meta_batch_combinations_distinct_and_samples_disjoint():
    data = meta_dataset(meta_batch_size=7)  # every combination once
    for k in range(20):
        meta_batch = data[k]
        assert sorted(m["tasks"] for m in meta_batch) == sorted(task_combinations(TASKS))
        for m in meta_batch:
            support, query = m["support"]["image"].tolist(), m["query"]["image"].tolist()
            assert (len(support), len(query)) == (4, 5)
            assert len(set(support) | set(query)) == 9


def test_meta_batch_dataset_errors():
    with pytest.raises(ValueError, match=r"support_size \+ query_size = 4 \+ 5 exceeds the 8"):
        meta_dataset(n=8)
    with pytest.raises(ValueError, match="meta_batch_size=8 exceeds the 7 task combinations"):
        meta_dataset(meta_batch_size=8)
    with pytest.raises(IndexError):
        meta_dataset()[-1]


def test_query_dataset_gives_the_query_batches():
    # support from the first dataset (indices < 16), query from the second (indices >= 100)
    class Offset(IndexDataset):
        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"image": torch.tensor(100 + index)}

    data = meta_dataset(query_dataset=Offset(6), meta_batch_size=7)
    for k in range(10):
        for m in data[k]:
            support, query = m["support"]["image"].tolist(), m["query"]["image"].tolist()
            assert len(support) == len(set(support)) == 4 and max(support) < 16
            assert len(query) == len(set(query)) == 5 and min(query) >= 100
    with pytest.raises(ValueError, match="query_size = 5 exceeds the 4 samples of the val split"):
        meta_dataset(query_dataset=Offset(4))
    with pytest.raises(ValueError, match="support_size = 4 exceeds the 3 samples of the train"):
        meta_dataset(n=3, query_dataset=Offset(6))
    assert len(meta_dataset(n=4, query_dataset=Offset(5))[0]) == 3  # 4 + 5 > 4 is fine now


def test_datamodule_query_split_val_draws_queries_from_the_val_split():
    data = MetaTaskDataModule(
        wrapped(),
        tasks=TASKS,
        meta_batch_size=2,
        support_size=3,
        query_size=4,
        meta_batches_per_epoch=2,
        query_split="val",
    )
    data.setup("fit")
    val_images = data.datamodule.datasets["val"]
    train_images = data.datamodule.datasets["train"]
    val = [val_images[i]["image"] for i in range(len(val_images))]
    train = [train_images[i]["image"] for i in range(len(train_images))]
    for meta_batch in data.train_dataloader():
        for m in meta_batch:
            assert all(any(torch.equal(q, v) for v in val) for q in m["query"]["image"])
            assert not any(any(torch.equal(s, v) for v in val) for s in m["support"]["image"])
            assert m["support"]["image"].shape[0] == 3 and m["query"]["seg"].shape[0] == 4
    assert any(torch.equal(m["support"]["image"][0], t) for t in train for m in meta_batch)


def test_sampler_splits_ranks_and_epochs():
    data = meta_dataset(num_meta_batches=7)
    ranks = [MetaBatchSampler(data, num_replicas=2, rank=r) for r in range(2)]
    epoch0 = [list(s) for s in ranks]
    assert [len(s) for s in ranks] == [3, 3]
    assert [len(e) for e in epoch0] == [3, 3]
    assert not set(epoch0[0]) & set(epoch0[1])
    for s in ranks:
        s.set_epoch(1)
    epoch1 = [list(s) for s in ranks]
    assert not (set(epoch0[0]) | set(epoch0[1])) & (set(epoch1[0]) | set(epoch1[1]))
    assert not set(epoch1[0]) & set(epoch1[1])
    assert list(MetaBatchSampler(data, num_replicas=1, rank=0)) == list(range(7))
    with pytest.raises(ValueError, match=r"meta_batches_per_epoch \(7\) must be >= the world"):
        MetaBatchSampler(data, num_replicas=8, rank=0)


def test_datamodule_train_loader_yields_meta_batches():
    data = MetaTaskDataModule(
        wrapped(),
        tasks=TASKS,
        min_tasks=2,
        meta_batch_size=2,
        support_size=3,
        query_size=2,
        meta_batches_per_epoch=3,
    )
    assert data.combinations == task_combinations(TASKS, 2)
    assert data.targets == data.datamodule.targets
    data.setup("fit")
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    meta_batch = batches[0]
    assert isinstance(meta_batch, list)
    assert len(meta_batch) == 2
    for m in meta_batch:
        assert set(m) == {"tasks", "support", "query"}
        assert isinstance(m["tasks"], tuple)
        assert m["tasks"] in data.combinations
        assert m["support"]["image"].shape == (3, 3, 16, 16)
        assert m["query"]["image"].shape == (2, 3, 16, 16)
        assert m["support"]["seg"].shape == (3, 16, 16)
        assert m["query"]["depth"].shape == (2, 1, 16, 16)
        assert m["query"]["normal"].shape == (2, 3, 16, 16)
        support, query = m["support"]["image"], m["query"]["image"]
        assert not any(torch.equal(s, q) for s in support for q in query)


def test_datamodule_delegates_evaluation_loaders():
    inner = wrapped()
    data = MetaTaskDataModule(inner, meta_batch_size=2, support_size=2, query_size=2)
    assert data.tasks == tuple(inner.targets)
    data.setup("validate")
    assert data.meta_dataset is None
    ours, theirs = next(iter(data.val_dataloader())), next(iter(inner.val_dataloader()))
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert len(data.test_dataloader().dataset) == TINY_DATA["num_test"]
    assert "datamodule" not in data.hparams
    assert "tasks" not in data.hparams
    assert data.hparams["meta_batch_size"] == 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"tasks": ["seg", "nope"]}, r"cannot provide \['nope'\]; available targets"),
        ({"min_tasks": 4}, r"min_tasks must lie in \[1, 3\].*got 4"),
        ({"meta_batch_size": 0}, "meta_batch_size must be at least 1, got 0"),
        (
            {"min_tasks": 2, "meta_batch_size": 5},
            r"meta_batch_size=5 exceeds the 4 task combinations .*lower meta_batch_size or min",
        ),
        ({"support_size": 0}, "support_size must be at least 1, got 0"),
        ({"query_size": -1}, "query_size must be at least 1, got -1"),
        ({"meta_batches_per_epoch": 0}, "meta_batches_per_epoch must be at least 1, got 0"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
        ({"query_split": "test"}, "query_split must be 'train' or 'val', got 'test'"),
    ],
)
def test_datamodule_option_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        MetaTaskDataModule(wrapped(), **{"tasks": TASKS, **overrides})


def test_datamodule_needs_the_meta_tasks_in_the_wrapped_samples():
    inner = wrapped(("seg", "depth"))
    with pytest.raises(ValueError, match=r"lack \['normal'\]; build it with tasks=None"):
        MetaTaskDataModule(inner, tasks=TASKS)
    MetaTaskDataModule(inner, tasks=["seg", "depth"], meta_batch_size=3)
    assert MetaTaskDataModule(inner, meta_batch_size=3).tasks == ("seg", "depth")  # its own tasks


def test_datamodule_setup_checks_train_size():
    data = MetaTaskDataModule(wrapped(num_train=6), tasks=TASKS, support_size=4, query_size=3)
    with pytest.raises(ValueError, match=r"support_size \+ query_size = 4 \+ 3 exceeds the 6"):
        data.setup("fit")
