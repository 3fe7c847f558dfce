"""`ManifestDataModule`: your own multi-task dataset, described by files instead of code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from lightning_mtl.targets import TargetSpec

from ..base import MultiTaskDataModule, MultiTaskDataset, image_size_of, seeded_split
from ..transforms import JointTransform
from .columns import ManifestError
from .reader import SPLITS, Row, open_manifest, read_columns

#: the most problems of a manifest an error shows (`lightning-mtl data check` lists them all)
SHOWN_PROBLEMS = 5


class ManifestDataModule(MultiTaskDataModule):
    """The samples listed in `root/manifest.csv`, with the target columns declared in
    `root/targets.yaml` or in `columns` (`datamodules.manifest.columns`; `columns` wins).

    Batch keys: `image` float32 [3,H,W] in [0,1] and one key per target column, named after
    it, in the batch layout of its kind (`seg` int64 [H,W] with 255 = unlabelled, `depth`
    float32 [1,H,W] metres with 0 = invalid, `normal` [3,H,W] unit, `edge` [1,H,W] in {0,1},
    `binary` a float32 scalar). A column's task is the task of that name, else of its kind
    (a `male` column of kind `binary` trains a binary task `male`). Only `image` and the
    requested `tasks` are in a batch (`None` = every declared column).

    Splits: each row's `split`; a split without rows (`val`, `test`) is carved from train with
    `seed` (`val_fraction`, `test_fraction` of its rows), so models are not selected on the
    test set. Train samples are augmented jointly (`JointTransform`) when `augment`; every split
    is resized to `image_size` (H, W). The table is parsed in `setup`; a bad row fails there,
    a bad file when it is read, both naming the line, the column, the file and what was
    expected.
    """

    def __init__(
        self,
        root: str,
        tasks: Sequence[str] | None = None,
        columns: Mapping[str, str | dict[str, Any]] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: tuple[int, int] = (256, 256),
        augment: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        fractions = (val_fraction, test_fraction)
        if not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
            raise ValueError(
                "val_fraction and test_fraction must lie in (0, 1) and sum to less than 1, "
                f"got {val_fraction} and {test_fraction}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.save_hyperparameters(ignore=["tasks"])
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"manifest root {self.root} does not exist (or is no folder)")
        self.columns = read_columns(self.root, columns)
        self.image_size = image_size_of(image_size)
        self.augment = augment
        self.fractions = dict(zip(("val", "test"), fractions, strict=True))
        self.seed = seed
        self.tasks = self.select_tasks(tasks, self.targets, f"the manifest at {self.root}")

    @property
    def targets(self) -> dict[str, TargetSpec]:
        """Every declared target column, by batch key (not only the requested tasks)."""
        return {key: column.spec for key, column in self.columns.items()}

    def setup(self, stage: str | None = None) -> None:
        """Parse the table and split its rows (cheap: files are read on access)."""
        manifest, problems = open_manifest(self.root, self.columns)
        if problems:
            more = len(problems) - SHOWN_PROBLEMS
            tail = f"\n… and {more} more (lightning-mtl data check lists them)" if more > 0 else ""
            raise ManifestError("\n".join(problems[:SHOWN_PROBLEMS]) + tail)
        for note in manifest.notes:
            rank_zero_warn(note)
        reader = partial(manifest.reader.read, keys=self.tasks)
        targets = {key: self.targets[key] for key in self.tasks}
        self.datasets = {
            split: MultiTaskDataset(
                rows,
                reader,
                targets,
                JointTransform(
                    self.image_size, train=split == "train" and self.augment, targets=targets
                ),
            )
            for split, rows in self._splits(manifest.rows, manifest.reader.path).items()
        }

    def _splits(self, rows: list[Row], path: Path) -> dict[str, list[Row]]:
        """The rows of each split; splits without rows carved from train with `seed`."""
        splits = {split: [row for row in rows if row.split == split] for split in SPLITS}
        num_train = len(splits["train"])
        missing = [split for split in self.fractions if not splits[split]]
        if missing:
            train = splits["train"]
            carved = [self.fractions[split] for split in missing]
            keep, *cuts = seeded_split(len(train), [1 - sum(carved), *carved], self.seed)
            splits["train"] = [train[i] for i in sorted(keep)]
            splits.update(
                {s: [train[i] for i in sorted(cut)] for s, cut in zip(missing, cuts, strict=True)}
            )
        for split, chosen in splits.items():
            if not chosen:
                raise ManifestError(
                    f"{path}: the {split} split is empty ({num_train} train rows, "
                    f"val_fraction={self.fractions['val']}, "
                    f"test_fraction={self.fractions['test']}); add rows or raise the fraction"
                )
        return splits
