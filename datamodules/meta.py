"""Meta-batches of task combinations for MAML-style meta-sparsity.

A meta-batch is `meta_batch_size` distinct task combinations, each with a support batch (the
inner-loop adaptation) and a disjoint query batch (the outer-loop loss), drawn from the train
split or, as the authors' code does, from a separate split. `MetaTaskDataModule`
wraps any `MultiTaskDataModule` so that its train loader yields meta-batches while validation,
test and predict stay the wrapped module's own.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence, Sized
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate

from .base import MultiTaskDataModule, MultiTaskDataset
from .sampling import ResumableSampler, ResumableTrainLoader, sample_seed

#: one task combination's samples: {"tasks": tuple[str, ...], "support": batch, "query": batch}
MetaTask = dict[str, Any]


def task_combinations(tasks: Sequence[str], min_size: int = 1) -> list[tuple[str, ...]]:
    """All task subsets of size >= `min_size`, in a stable order (by size, then the order of
    `tasks`), so that a combination's index means the same thing on every run and rank."""
    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a sequence of task names, not the string {tasks!r}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must not be empty")
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise ValueError(f"tasks must be distinct, got {duplicates} more than once in {tasks}")
    if not 1 <= min_size <= len(tasks):
        raise ValueError(
            f"min_size must lie in [1, {len(tasks)}] for tasks {tasks}, got {min_size}"
        )
    return [
        combo
        for size in range(min_size, len(tasks) + 1)
        for combo in itertools.combinations(tasks, size)
    ]


def _check_meta_options(
    combinations: Sequence[tuple[str, ...]],
    meta_batch_size: int,
    support_size: int,
    query_size: int,
    num_meta_batches: int,
    seed: int,
) -> None:
    """A ValueError naming the first meta-batch option that cannot work."""
    for name, value in {
        "meta_batch_size": meta_batch_size,
        "support_size": support_size,
        "query_size": query_size,
        "meta_batches_per_epoch": num_meta_batches,
    }.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if meta_batch_size > len(combinations):
        raise ValueError(
            f"meta_batch_size={meta_batch_size} exceeds the {len(combinations)} task combinations "
            f"{list(combinations)} (a meta-batch holds distinct combinations); lower "
            "meta_batch_size or min_tasks"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


class MetaBatchDataset(Dataset):
    """Item `k` (any int k >= 0, the global meta-batch number) is one meta-batch, drawn from
    `np.random.default_rng([seed, k])` only, so it is the same whatever the worker, rank or order.

    A meta-batch is a list of `meta_batch_size` dicts {"tasks", "support", "query"}: distinct
    combinations drawn without replacement from `combinations`; per combination,
    `support_size + query_size` distinct indices of `dataset`, so support and query are disjoint
    (with a `query_dataset`: `support_size` of `dataset` and `query_size` of `query_dataset`);
    each batch is `default_collate` of the dataset's samples (all keys the dataset provides); a
    `MultiTaskDataset` gets a per-sample augmentation seed from `(seed, k, position)` as well.
    The length is the number of meta-batches per epoch; `MetaBatchSampler` numbers them globally.
    """

    def __init__(
        self,
        dataset: Dataset,
        combinations: Sequence[tuple[str, ...]],
        meta_batch_size: int,
        support_size: int,
        query_size: int,
        seed: int,
        num_meta_batches: int,
        query_dataset: Dataset | None = None,
        query_split: str = "val",
    ) -> None:
        _check_meta_options(
            combinations, meta_batch_size, support_size, query_size, num_meta_batches, seed
        )
        if query_dataset is None and support_size + query_size > len(dataset):
            raise ValueError(
                f"support_size + query_size = {support_size} + {query_size} exceeds the "
                f"{len(dataset)} samples of the train split (support and query are disjoint)"
            )
        if query_dataset is not None:
            for name, size, split, data in (
                ("support_size", support_size, "train", dataset),
                ("query_size", query_size, query_split, query_dataset),
            ):
                if size > len(data):
                    raise ValueError(
                        f"{name} = {size} exceeds the {len(data)} samples of the {split} split"
                    )
        self.dataset = dataset
        self.query_dataset = query_dataset
        self.combinations = [tuple(c) for c in combinations]
        self.meta_batch_size = meta_batch_size
        self.support_size = support_size
        self.query_size = query_size
        self.seed = seed
        self.num_meta_batches = num_meta_batches

    def __len__(self) -> int:
        return self.num_meta_batches

    def __getitem__(self, k: int) -> list[MetaTask]:
        if k < 0:
            raise IndexError(f"meta-batch numbers are >= 0, got {k}")
        rng = np.random.default_rng([self.seed, int(k)])
        picks = rng.choice(len(self.combinations), self.meta_batch_size, replace=False)
        meta_batch = []
        for n, pick in enumerate(picks):
            if self.query_dataset is None:
                indices = rng.choice(len(self.dataset), self.support_size + self.query_size, False)
                sources = [self.dataset] * len(indices)
            else:
                indices = np.concatenate(
                    [
                        rng.choice(len(self.dataset), self.support_size, False),
                        rng.choice(len(self.query_dataset), self.query_size, False),
                    ]
                )
                sources = [self.dataset] * self.support_size + [
                    self.query_dataset
                ] * self.query_size
            samples = [
                _sample(data, int(i), sample_seed(self.seed, k, n, j))
                for j, (data, i) in enumerate(zip(sources, indices, strict=True))
            ]
            meta_batch.append(
                {
                    "tasks": self.combinations[pick],
                    "support": default_collate(samples[: self.support_size]),
                    "query": default_collate(samples[self.support_size :]),
                }
            )
        return meta_batch


def _sample(dataset: Dataset, index: int, seed: int) -> Any:
    """Sample `index`; a `MultiTaskDataset` augments it with `seed`."""
    if not isinstance(dataset, MultiTaskDataset):
        return dataset[index]
    return dataset[index, seed]


def _as_is(meta_batch: list[MetaTask]) -> list[MetaTask]:
    """The loader's per-item convert: keep `tasks` a tuple (`default_convert` makes lists)."""
    return meta_batch


class MetaBatchSampler(ResumableSampler):
    """Global meta-batch numbers `epoch * n + rank + j * num_replicas` for j < n // num_replicas,
    n = len(dataset): every epoch and every rank gets different meta-batches, and every rank
    takes the same number of steps.

    A `ResumableSampler` (so a `DistributedSampler`, which Lightning keeps under DDP instead of
    injecting its own, and calls `set_epoch` on each epoch; `skip` leaves out the meta-batches a
    checkpoint had done). `num_replicas` and `rank` are explicit, so it works without
    `torch.distributed`; `seed` is unused (a meta-batch's content is `MetaBatchDataset`'s).
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, seed: int = 0) -> None:
        if not 1 <= num_replicas <= len(dataset):
            raise ValueError(
                f"meta_batches_per_epoch ({len(dataset)}) must be >= the world size "
                f"({num_replicas}) so that every rank gets a meta-batch"
            )
        super().__init__(dataset, num_replicas, rank, shuffle=False, seed=seed)
        self.per_epoch = len(dataset)

    def indices(self) -> list[int]:
        start = self.epoch * self.per_epoch + self.rank
        return list(range(start, start + len(self) * self.num_replicas, self.num_replicas))

    def __len__(self) -> int:
        return self.per_epoch // self.num_replicas


class MetaTaskDataModule(ResumableTrainLoader, LightningDataModule):
    """A `MultiTaskDataModule` whose train loader yields meta-batches (see `MetaBatchDataset`):
    each step is `meta_batch_size` distinct combinations of at least `min_tasks` of `tasks`, each
    with its own support and query batch. Validation, test, predict, `prepare_data`, `setup` and
    `targets` are the wrapped module's; the state dict is the meta-batch sampler's position
    (`ResumableTrainLoader`), so a run resumed mid-epoch continues with the next meta-batch.

    Build the wrapped module with `tasks=None` (or a superset of the meta tasks): its samples must
    carry every target a combination may ask for. `tasks=None` here means the wrapped module's
    own tasks (all its `targets` when it was built with `tasks=None`).

    `query_split="val"` draws the query batches from the wrapped module's validation split (the
    authors' setup; validation then scores images the outer loss has seen), the support batches
    from its train split.
    """

    def __init__(
        self,
        datamodule: MultiTaskDataModule,
        tasks: Sequence[str] | None = None,
        min_tasks: int = 1,
        meta_batch_size: int = 4,
        support_size: int = 8,
        query_size: int = 8,
        meta_batches_per_epoch: int = 50,
        num_workers: int = 0,
        seed: int = 0,
        query_split: Literal["train", "val"] = "train",
    ) -> None:
        super().__init__()
        self.datamodule = datamodule
        provided = getattr(datamodule, "tasks", None)
        if tasks is None and provided is not None:
            tasks = list(provided)
        self.tasks = datamodule.select_tasks(tasks, datamodule.targets, "the wrapped datamodule")
        if provided is not None and (missing := [t for t in self.tasks if t not in provided]):
            raise ValueError(
                f"the wrapped datamodule was built with tasks={list(provided)}, so its samples "
                f"lack {missing}; build it with tasks=None or a superset of {list(self.tasks)}"
            )
        if not 1 <= min_tasks <= len(self.tasks):
            raise ValueError(
                f"min_tasks must lie in [1, {len(self.tasks)}] for tasks {list(self.tasks)}, "
                f"got {min_tasks}"
            )
        self.min_tasks = min_tasks
        _check_meta_options(
            self.combinations,
            meta_batch_size,
            support_size,
            query_size,
            meta_batches_per_epoch,
            seed,
        )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if query_split not in ("train", "val"):
            raise ValueError(f"query_split must be 'train' or 'val', got {query_split!r}")
        # `tasks` would clash with the model's own hyperparameter of that name
        self.save_hyperparameters(ignore=["datamodule", "tasks"])
        self.meta_batch_size = meta_batch_size
        self.support_size = support_size
        self.query_size = query_size
        self.meta_batches_per_epoch = meta_batches_per_epoch
        self.num_workers = num_workers
        self.seed = seed
        self.query_split = query_split
        self.meta_dataset: MetaBatchDataset | None = None

    @property
    def combinations(self) -> list[tuple[str, ...]]:
        """The task combinations a meta-batch draws from."""
        return task_combinations(self.tasks, self.min_tasks)

    @property
    def targets(self) -> dict[str, Any]:
        """Everything the wrapped datamodule can provide, by batch key."""
        return self.datamodule.targets

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The wrapped datamodule's image size (H, W), if it has one."""
        return getattr(self.datamodule, "image_size", None)

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Set up the wrapped module; for fitting, also the meta-batches over its train split."""
        self.datamodule.setup(stage)
        if stage in (None, "fit"):
            self.meta_dataset = MetaBatchDataset(
                self.datamodule.datasets["train"],
                self.combinations,
                self.meta_batch_size,
                self.support_size,
                self.query_size,
                self.seed,
                self.meta_batches_per_epoch,
                query_dataset=self.datamodule.datasets[self.query_split]
                if self.query_split != "train"
                else None,
                query_split=self.query_split,
            )

    def teardown(self, stage: str | None = None) -> None:
        self.datamodule.teardown(stage)

    def train_dataloader(self) -> DataLoader:
        """One meta-batch per step; `batch_size=None` since a meta-batch is already collated."""
        if self.meta_dataset is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        sampler = self.train_sampler(MetaBatchSampler, self.meta_dataset, 1)
        return DataLoader(
            self.meta_dataset,
            batch_size=None,
            sampler=sampler,
            collate_fn=_as_is,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # worker base seeds from here, not from the global RNG (dropout's stream)
            generator=torch.Generator().manual_seed(sampler.seed),
        )

    def val_dataloader(self) -> Any:
        return self._wrapped().val_dataloader()

    def test_dataloader(self) -> Any:
        return self._wrapped().test_dataloader()

    def predict_dataloader(self) -> Any:
        return self._wrapped().predict_dataloader()

    def _wrapped(self) -> MultiTaskDataModule:
        """The wrapped module, with this module's trainer: Lightning attaches only the datamodule
        it was given, and the wrapped module's eval loaders split by the trainer's ranks."""
        self.datamodule.trainer = self.trainer
        return self.datamodule
