"""`SyntheticDataModule`: procedurally rendered indoor scenes; no download, no files written."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_mtl.targets import TargetSpec

from ..base import MultiTaskDataModule, image_size_of
from .sample import BINARY_LABELS, render_sample
from .scene import CLASS_NAMES

SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

#: every target the synthetic scenes provide, by batch key
TARGETS: dict[str, TargetSpec] = {
    "seg": TargetSpec("seg", num_classes=len(CLASS_NAMES)),
    "depth": TargetSpec("depth"),
    "normal": TargetSpec("normal"),
    "edge": TargetSpec("edge"),
    **{name: TargetSpec("binary") for name in BINARY_LABELS},
}


class SyntheticDataset(Dataset):
    """A split of rendered samples; sample `i` is rendered on access from `(seed, split, i)` only,
    so it is identical whatever the worker count or access order."""

    def __init__(
        self, split: str, length: int, keys: Sequence[str], image_size: tuple[int, int], seed: int
    ) -> None:
        self.split_id = SPLIT_IDS[split]
        self.length = length
        self.keys = ("image", *keys)
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a split of {self.length}")
        sample = render_sample(self.seed, self.split_id, int(index), self.image_size)
        return {key: torch.from_numpy(np.asarray(sample[key])) for key in self.keys}


class SyntheticDataModule(MultiTaskDataModule):
    """Ray-cast rooms with random primitives: RGB, semantic labels, metric depth, normals that
    agree with the depth, edges and image-level labels, deterministic per `seed`.

    Batch keys: `image` float32 [3,H,W] in [0,1]; `seg` int64 [H,W] (255 = unlabeled); `depth`
    float32 [1,H,W] z-depth in metres (0 = invalid); `normal` float32 [3,H,W] unit vectors in
    camera coordinates (x right, y down, z forward, facing the camera; all-zero = invalid);
    `edge` float32 [1,H,W] in {0,1}; one float32 scalar in {0,1} per binary label
    (`BINARY_LABELS`). Only `image` and the requested `tasks` are in a batch (`None` = all).
    Samples are rendered on access (about 3 ms at 64×64 on one CPU core).
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: tuple[int, int] = (64, 64),
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.tasks = self.select_tasks(tasks, TARGETS, "synthetic data")
        self.image_size = image_size_of(image_size)
        counts = {
            "num_train": num_train,
            "num_val": num_val,
            "num_test": num_test,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        # `tasks` here are target keys; the model logs its own task list under the same name
        self.save_hyperparameters(ignore=["tasks"])
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed

    @property
    def targets(self) -> dict[str, TargetSpec]:
        """Everything this datamodule can provide, by batch key (not only the requested tasks)."""
        return dict(TARGETS)

    def setup(self, stage: str | None = None) -> None:
        """Build the three splits (cheap: nothing is rendered until accessed)."""
        self.datasets = {
            split: SyntheticDataset(split, n, self.tasks, self.image_size, self.seed)
            for split, n in self.sizes.items()
        }
