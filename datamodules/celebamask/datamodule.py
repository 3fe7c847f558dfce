"""`CelebAMaskHQDataModule`: face parsing and the 40 CelebA attributes from CelebAMask-HQ."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_mtl.targets import TargetSpec

from ..base import Arrays, MultiTaskDataModule, MultiTaskDataset, image_size_of, seeded_split
from ..synthetic_root import write_root_once
from ..transforms import JointTransform
from .classes import class_map, flip_label_map, num_classes, parsing_lut
from .layout import (
    ATTRIBUTE_FILE,
    ATTRIBUTES,
    MAPPING_FILE,
    check_root,
    id_problems,
    image_ids,
    image_path,
    image_size,
    load_image,
    load_parsing,
    official_partition,
    parse_attributes,
    parse_mapping,
    read_attribute_names,
)
from .writer import write_synthetic_celebamask

#: attribute task key → column: the lower-cased CelebA names
ATTRIBUTE_KEYS: dict[str, int] = {name.lower(): k for k, name in enumerate(ATTRIBUTES)}
#: other names papers use: "smile" (e.g. the CelebA MTL literature) is `Smiling`
ATTRIBUTE_ALIASES: dict[str, str] = {"smile": "smiling"}
SPLITS = ("train", "val", "test")
Record = tuple[int, np.ndarray]  # (id, the id's ±1 attribute row)


class CelebAMaskReader:
    """`(id, attribute row) -> arrays`: image at the masks' resolution, `seg` through the class
    lookup table (nearest: labels are never interpolated), attributes as {0,1} float32."""

    def __init__(self, root: Path, keys: Sequence[str], lut: np.ndarray) -> None:
        self.root = root
        self.keys = tuple(keys)
        self.lut = lut

    def __call__(self, record: Record) -> Arrays:
        image_id, row = record
        path = image_path(self.root, image_id)
        wh = image_size(path)
        arrays: Arrays = {}
        if "seg" in self.keys:
            parsing = load_parsing(self.root, image_id, wh)
            arrays["seg"] = self.lut[parsing]
            wh = (parsing.shape[1], parsing.shape[0])
        else:
            wh = (wh[0] // 2, wh[1] // 2)  # the official mask resolution
        arrays["image"] = load_image(path, wh).astype(np.float32) / 255.0
        for key in self.keys:
            if key != "seg":
                column = ATTRIBUTE_KEYS[ATTRIBUTE_ALIASES.get(key, key)]
                arrays[key] = np.float32(row[column] > 0)
        return arrays


class CelebAMaskHQDataModule(MultiTaskDataModule):
    """CelebAMask-HQ in its official layout (`layout`): `seg` face parsing and one binary task
    per attribute.

    Batch keys: `image` float32 [3,H,W] in [0,1]; `seg` int64 [H,W] (255 = ignore, from
    augmentation padding only); per requested attribute (lower-case CelebA name, `smile` =
    `smiling`) a float32 scalar, 1 = present (+1 in the file), 0 = absent (−1).
    `parts`: "3" (background, skin = face skin and facial parts incl. glasses, hair), "19"
    (background + the 18 parts in official order; flips swap l_/r_ classes) or a part → class
    dict (unlisted parts are background). Images are brought to the masks' resolution (512²
    for the 1024² images), then resized / augmented jointly to `image_size`.
    `split`: "random" = seeded `split_fractions` over all ids (the papers' 60/20/20);
    "official" = CelebA's train/val/test partition of each id's CelebA source image, via
    `CelebA-HQ-to-CelebA-mapping.txt` (CelebA's list_eval_partition.txt is contiguous by file
    number, so it is not needed).
    `synthesize=N` makes `prepare_data` write N drawn faces (`write_synthetic_celebamask`, at
    twice `image_size` so the masks come at `image_size`) into `root` when it does not exist
    yet, once and atomically; the root is checked after the write instead of in `__init__`.
    """

    def __init__(
        self,
        root: str,
        tasks: Sequence[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: tuple[int, int] = (256, 256),
        augment: bool = True,
        parts: Literal["3", "19"] | Mapping[str, int] = "3",
        split: Literal["random", "official"] = "random",
        split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
        seed: int = 0,
        synthesize: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if synthesize < 0:
            raise ValueError(f"synthesize must be >= 0, got {synthesize}")
        self.root = Path(root)
        self.synthesize = synthesize
        if not synthesize or self.root.exists():  # else checked once prepare_data has written it
            self._check_root(self.root)
        self.class_map = class_map(parts)
        self.num_classes = num_classes(self.class_map)
        self.flip_label_map = flip_label_map(self.class_map)
        available = dict.fromkeys(["seg", *ATTRIBUTE_KEYS, *ATTRIBUTE_ALIASES])
        default = ["seg", *ATTRIBUTE_KEYS]  # all, without the alias duplicating `smiling`
        self.tasks = self.select_tasks(
            default if tasks is None else tasks, available, "CelebAMask-HQ"
        )
        if split not in ("random", "official"):
            raise ValueError(f"split must be 'random' or 'official', got {split!r}")
        if len(split_fractions) != 3:
            raise ValueError(f"split_fractions must be (train, val, test), got {split_fractions}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.save_hyperparameters(ignore=["tasks"])
        self.image_size = image_size_of(image_size)
        self.augment = augment
        self.split = split
        self.split_fractions = tuple(split_fractions)
        self.seed = seed

    @staticmethod
    def _check_root(root: Path) -> None:
        """Raise unless `root` has the official layout and a well-formed attribute header."""
        check_root(root)
        read_attribute_names(root / ATTRIBUTE_FILE)  # a malformed header fails here

    @property
    def _synthetic_size(self) -> int:
        """The side of the synthesized images: masks (half the images) come at `image_size`."""
        return max(16, 2 * max(self.image_size))

    def prepare_data(self) -> None:
        """With `synthesize`, write the synthetic faces once; a crash leaves no partial root."""
        if self.synthesize:
            write_root_once(
                self.root,
                partial(
                    write_synthetic_celebamask,
                    num_images=self.synthesize,
                    image_size=self._synthetic_size,
                    seed=self.seed,
                ),
                check=self._check_root,
            )

    @property
    def targets(self) -> dict[str, TargetSpec]:
        """`seg` and the 40 attributes (plus any alias requested in `tasks`), by batch key."""
        aliases = [t for t in self.tasks if t in ATTRIBUTE_ALIASES]
        return {
            "seg": TargetSpec("seg", num_classes=self.num_classes),
            **{key: TargetSpec("binary") for key in (*ATTRIBUTE_KEYS, *aliases)},
        }

    def setup(self, stage: str | None = None) -> None:
        """Read the attribute rows, match them with the images, split the ids."""
        if self.datasets:
            return
        if self.synthesize and not self.root.exists():
            raise FileNotFoundError(
                f"{self.root} does not exist yet: with synthesize={self.synthesize}, "
                "prepare_data() writes it (the Trainer calls it before setup)"
            )
        self._check_root(self.root)  # the root may have been written since __init__
        records = self._records()
        splits = self._split([image_id for image_id, _ in records])
        reader = CelebAMaskReader(self.root, self.tasks, parsing_lut(self.class_map))
        targets = {key: self.targets[key] for key in self.tasks}
        evaluation = JointTransform(self.image_size, train=False, targets=targets)
        train = (
            JointTransform(
                self.image_size, train=True, flip_label_map=self.flip_label_map, targets=targets
            )
            if self.augment
            else evaluation
        )
        self.datasets = {
            name: MultiTaskDataset(
                [records[i] for i in indices],
                reader,
                targets,
                transform=train if name == "train" else evaluation,
            )
            for name, indices in zip(SPLITS, splits, strict=True)
        }

    def _records(self) -> list[Record]:
        """Every id with its attribute row, sorted; raises on any mismatch or bad row."""
        path = self.root / ATTRIBUTE_FILE
        rows, problems = parse_attributes(path)
        ids = image_ids(self.root)
        problems += id_problems(self.root, rows, ids)
        if problems:
            more = f"\n… and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ValueError("\n".join(problems[:5]) + more)
        return [(i, rows[i]) for i in sorted(ids)]

    def _split(self, ids: list[int]) -> list[list[int]]:
        """Indices into `ids` of the train, val and test splits."""
        if self.split == "random":
            return [list(s) for s in seeded_split(len(ids), self.split_fractions, self.seed)]
        numbers, problems = parse_mapping(self.root / MAPPING_FILE)
        missing = [i for i in ids if i not in numbers]
        if missing:
            problems.append(f"{self.root / MAPPING_FILE}: no row for ids {missing[:10]}")
        if problems:
            raise ValueError("\n".join(problems[:5]))
        parts = [official_partition(numbers[i]) for i in ids]
        return [[k for k, p in enumerate(parts) if p == name] for name in SPLITS]
