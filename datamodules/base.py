"""What every file-backed datamodule shares: the sample layout, the dataset, the loaders.

A *reader* turns one sample record (file paths, an id, …) into numpy arrays in the
**array layout** of their target kinds (`lightning_mtl.targets`), which is what the joint
transforms take; `to_batch` turns them into the batch layout (channels first, torch tensors)
that every datamodule returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_mtl.targets import TargetKind, TargetSpec, sample_kinds

from .sampling import ResumableSampler, ResumableTrainLoader

Arrays = dict[str, Any]
Reader = Callable[[Any], Arrays]
Transform = Callable[[Arrays], Arrays]


def to_batch(arrays: Mapping[str, Any], kinds: Mapping[str, TargetKind]) -> dict[str, Tensor]:
    """One sample in the batch layout: the arrays of the keys of `kinds`, each by its kind."""
    return {key: kind.to_batch(arrays[key]) for key, kind in kinds.items()}


class MultiTaskDataset(Dataset):
    """Samples read by `reader` from `records`, optionally transformed, in the batch layout:
    `image` plus the keys of `targets` (the requested ones).

    An item is an index or an `(index, seed)` pair (what a `ResumableSampler` with
    `sample_seeds` yields): the seed then reseeds a transform that has `set_random_seed` (as
    `JointTransform` has) for that sample, so its augmentation depends on the seed only.
    """

    def __init__(
        self,
        records: Sequence[Any],
        reader: Reader,
        targets: Mapping[str, TargetSpec],
        transform: Transform | None = None,
    ) -> None:
        self.records = list(records)
        self.reader = reader
        self.kinds = sample_kinds(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Tensor]:
        index, seed = index if isinstance(index, tuple) else (index, None)
        arrays = self.reader(self.records[index])
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed)
            arrays = self.transform(arrays)
        return to_batch(arrays, self.kinds)


def image_size_of(image_size: Sequence[int]) -> tuple[int, int]:
    """`image_size` as (H, W) ints, or a ValueError saying what is expected."""
    size = tuple(image_size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size}")
    return int(size[0]), int(size[1])


def seeded_split(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices 0..n-1 shuffled with `seed` and cut by `fractions` (summing to 1)."""
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    return np.split(order, cuts)


class MultiTaskDataModule(ResumableTrainLoader, LightningDataModule):
    """Loaders and task selection shared by the datamodules.

    Subclasses fill `self.datasets` ("train", "val", "test") in `setup()` and expose `targets`
    (what they can provide, by batch key). The train loader shuffles and drops a last partial
    batch; predict uses the test split. The train order and augmentation are a pure function of
    (seed, epoch) and checkpointed (`ResumableTrainLoader`), so a run resumed mid-epoch
    continues exactly.
    """

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] = {}

    def select_tasks(
        self, tasks: Sequence[str] | str | None, targets: Mapping[str, Any], what: str
    ) -> tuple[str, ...]:
        """The requested target keys (`None` = all), or an error listing what `what` provides."""
        tasks = list(targets) if tasks is None else [tasks] if isinstance(tasks, str) else tasks
        unknown = [t for t in tasks if t not in targets]
        if unknown:
            raise ValueError(f"{what} cannot provide {unknown}; available targets: {list(targets)}")
        return tuple(dict.fromkeys(tasks))

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        sampler = self.train_sampler(
            ResumableSampler,
            dataset,
            self.batch_size,
            sample_seeds=isinstance(dataset, MultiTaskDataset),
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # worker base seeds from here, not from the global RNG (dropout's stream)
            generator=torch.Generator().manual_seed(sampler.seed),
        )

    def _eval_loader(self, split: str) -> DataLoader:
        """The val/test/predict loader: in order, every sample once.

        Under a distributed trainer each rank takes every `world_size`-th sample from its rank
        on (`UnrepeatedDistributedSampler`), so ranks may get one sample (and batch) fewer
        instead of the padding Lightning's own `DistributedSampler` adds by repeating samples,
        which would count those samples twice in the split's metrics. It is a
        `DistributedSampler`, so Lightning keeps it. Needs at least one sample per rank.
        """
        dataset = self.datasets[split]
        trainer = self.trainer  # a plain attribute of a datamodule: None outside a Trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # worker base seeds from here: starting a loader draws nothing from the global RNG
            generator=torch.Generator().manual_seed(0),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
