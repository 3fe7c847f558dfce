"""`NYUv2DataModule`: NYU-v2 from disk in the MTAN, NYUD-MT or PNG-export layout."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import get_args

from lightning.pytorch.utilities import rank_zero_warn

from lightning_mtl.targets import TargetSpec

from ..base import MultiTaskDataModule, MultiTaskDataset, image_size_of, seeded_split
from ..synthetic_root import write_root_once
from ..transforms import JointTransform
from .formats import FORMATS, DepthNormalisation
from .reader import Layout, Sample, layout_of, resolve
from .writer import write_synthetic_nyuv2


class NYUv2DataModule(MultiTaskDataModule):
    """NYU-v2 read strictly from `root` (see `formats` for the three layouts; `auto` detects).

    Batch keys: `image` float32 [3,H,W] in [0,1]; `seg` int64 [H,W] (255 = unlabeled; 13 or 40
    classes as stored, `num_classes` picks when both are); `depth` float32 [1,H,W] metres
    (0 = invalid); `normal` float32 [3,H,W] unit (all-zero = invalid); `edge` float32 [1,H,W],
    stored (NYUD-MT) or derived from the labels (`formats.label_edges`). Only `image` and the
    requested `tasks` are in a batch (`None` = every target the root provides).

    Splits: `test` is NYU's test split (MTAN's `val` folder); `val` is the format's own where
    it has one (NYUD-MT `gt_sets/val.txt`), else `val_fraction` of train drawn with `seed`, so
    models are never selected on the test set. An NYUD-MT root with `gt_sets/val.txt` but no
    `test.txt` (Vandenhende's and ASTMT's copies) is evaluated on val: `test` is then the val
    split, and a warning says so at start-up. Train samples are augmented jointly
    (`JointTransform`) when `augment`; every split is resized to `image_size` (H, W).

    `depth_normalisation="per_image_max"` divides each image's depth by its largest value in
    every split (the reference code's normalisation; 0 stays invalid); "none" keeps metres.

    `synthesize=N` makes `prepare_data` write N train + N//4 test synthetic scenes into `root`
    in `format` (`mtan` for `auto`) when `root` does not exist yet.
    """

    def __init__(
        self,
        root: str,
        tasks: Sequence[str] | None = None,
        format: str = "auto",
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: tuple[int, int] = (288, 384),
        augment: bool = True,
        num_classes: int | None = None,
        depth_normalisation: DepthNormalisation = "none",
        val_fraction: float = 0.1,
        seed: int = 0,
        synthesize: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if format != "auto":
            FORMATS.get(format)  # an unknown name fails here, listing the formats
        self.image_size = image_size_of(image_size)
        if seed < 0 or synthesize < 0:
            raise ValueError(f"need seed, synthesize >= 0, got {seed}, {synthesize}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        if depth_normalisation not in get_args(DepthNormalisation):
            raise ValueError(
                f"depth_normalisation must be one of {list(get_args(DepthNormalisation))}, "
                f"got {depth_normalisation!r}"
            )
        # `tasks` here are target keys; the model logs its own task list under the same name
        self.save_hyperparameters(ignore=["tasks"])
        self.root = Path(root)
        self.format = format
        self.augment = augment
        self.num_classes = num_classes
        self.depth_normalisation = depth_normalisation
        self.val_fraction = val_fraction
        self.seed = seed
        self.synthesize = synthesize
        self.layout = self._inspect()
        if self.root.exists():
            for note in self.layout.notes:
                rank_zero_warn(note)
        self.tasks = self.select_tasks(tasks, self.layout.targets, f"NYU-v2 at {self.root}")

    @property
    def _write_format(self) -> str:
        return "mtan" if self.format == "auto" else self.format

    def _inspect(self) -> Layout:
        """The root's layout (cheap: folders only), or the one `prepare_data` will write."""
        if self.synthesize and not self.root.exists():
            return layout_of(FORMATS[self._write_format], None, self.num_classes)
        return resolve(self.root, self.format, self.num_classes)

    @property
    def targets(self) -> dict[str, TargetSpec]:
        """Everything the root provides, by batch key (not only the requested tasks)."""
        return self.layout.targets

    def prepare_data(self) -> None:
        """With `synthesize`, write the synthetic scenes once; a crash leaves no partial root."""
        if not self.synthesize:
            return
        num_test = max(1, self.synthesize // 4)
        write_root_once(
            self.root,
            partial(
                write_synthetic_nyuv2,
                format=self._write_format,
                num_train=self.synthesize,
                num_test=num_test,
                image_size=self.image_size,
                seed=self.seed,
            ),
            check=partial(resolve, format=self._write_format, num_classes=self.num_classes),
        )

    def _splits(self) -> dict[str, list[Sample]]:
        splits = self.layout.samples()
        if "test" not in splits:  # NYUD-MT with train.txt and val.txt only: evaluate on val
            splits["test"] = splits["val"]
        if "val" not in splits:
            train = splits["train"]
            keep, val = seeded_split(
                len(train), [1 - self.val_fraction, self.val_fraction], self.seed
            )
            splits["train"] = [train[i] for i in sorted(keep)]
            splits["val"] = [train[i] for i in sorted(val)]
        for split, samples in splits.items():
            if not samples:
                raise ValueError(
                    f"NYU-v2 at {self.root}: the {split} split is empty (train has "
                    f"{len(splits['train'])} samples, val_fraction={self.val_fraction})"
                )
        return splits

    def setup(self, stage: str | None = None) -> None:
        """List the samples of every split (cheap: files are read on access)."""
        self.layout = resolve(self.root, self.format, self.num_classes)
        reader = partial(
            self.layout.read, keys=self.tasks, depth_normalisation=self.depth_normalisation
        )
        targets = {key: self.targets[key] for key in self.tasks}
        self.datasets = {
            split: MultiTaskDataset(
                samples,
                reader,
                targets,
                JointTransform(
                    self.image_size, train=split == "train" and self.augment, targets=targets
                ),
            )
            for split, samples in self._splits().items()
        }
