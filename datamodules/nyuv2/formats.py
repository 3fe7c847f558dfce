"""The three NYU-v2 on-disk formats: detection, sample listing, and each key's file and decoder.

Every key is decoded strictly by a converter of `datamodules.decoding` (wrong shape, labels out
of range, NaN/inf and truncated files are rejected); `Layout.load` re-raises every failure as
`NYUv2DataError` naming the file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import numpy as np

from lightning_mtl.registry import Registry

from ..decoding import (
    depth_from_metres,
    edge_from_binary,
    image_from_float,
    image_from_uint8,
    load_image,
    load_npy,
    normal_from_float,
    normal_from_uint8,
    seg_from_labels,
)


class NYUv2DataError(ValueError):
    """A file of an NYU-v2 root is missing, unreadable or holds unexpected values."""


#: how depth is scaled when read: "none" = metres; "per_image_max" = divided by the image's
#: largest depth (the reference code's normalisation, see `depth_per_image_max`)
DepthNormalisation = Literal["none", "per_image_max"]


@dataclass(frozen=True)
class Field:
    """How one key is stored: `pattern` (relative to the root, with `{split}` and `{id}`), what
    the file must hold (for errors), and how to read it (`read(path)` → array layout)."""

    pattern: str
    expected: str
    read: Callable[[Path], np.ndarray]

    def path(self, root: Path, split_dir: str, sample_id: str) -> Path:
        return root / self.pattern.format(split=split_dir, id=sample_id)


def _apply(load: Callable[[Path], np.ndarray], convert: Callable, path: Path) -> np.ndarray:
    return convert(load(path))


def _npy(convert: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], np.ndarray]:
    """A picklable reader: `convert(np.load(path))`."""
    return partial(_apply, load_npy, convert)


def _png(convert: Callable[[np.ndarray], np.ndarray], *modes: str) -> Callable[[Path], np.ndarray]:
    """A picklable reader: `convert` of a png/jpg of one of `modes`."""
    return partial(_apply, partial(load_image, modes=modes), convert)


# --- formats --------------------------------------------------------------------------------


class NYUv2Format(ABC):
    """One on-disk layout: what marks it, its files per key, its sample ids per split."""

    name: ClassVar[str]
    #: relative paths that must all exist for auto-detection
    required: ClassVar[tuple[str, ...]]
    #: the files it needs, for error messages
    layout: ClassVar[str]
    #: our split name → the folder holding it (formats without split folders: "")
    split_dirs: ClassVar[dict[str, str]] = {"train": "train", "test": "test"}

    def matches(self, root: Path) -> bool:
        return all((root / p).exists() for p in self.required)

    @abstractmethod
    def fields(self, num_classes: int | None) -> dict[str, Field]:
        """Every key the format can store (`image` included), with labels of `num_classes`."""

    @abstractmethod
    def class_counts(self) -> tuple[int, ...]:
        """The seg class counts the format can hold, default first."""

    @abstractmethod
    def sample_ids(self, root: Path) -> dict[str, list[str]]:
        """Sample ids of `train`, `test` and, where the format has one, `val`."""

    def notes(self, root: Path) -> list[str]:
        """What to know about how `root` is read, not problems (none by default)."""
        return []

    def _listed(self, path: Path) -> list[str]:
        try:
            lines = path.read_text().split()
        except (OSError, UnicodeDecodeError) as e:
            raise NYUv2DataError(f"{path}: cannot read the id list ({e})") from e
        return list(dict.fromkeys(lines))


#: the formats by name, in detection order (`register_nyuv2_format` adds one)
FORMATS: Registry[NYUv2Format] = Registry("NYU-v2 format")
_FormatT = TypeVar("_FormatT", bound=type[NYUv2Format])


def register_nyuv2_format(cls: _FormatT) -> _FormatT:
    """Class decorator: make a format choosable by its `name` and found by auto-detection."""
    FORMATS.register(cls.name, cls())
    return cls


def list_nyuv2_formats() -> list[str]:
    """The registered format names (what `format=` takes besides "auto")."""
    return FORMATS.names()


@register_nyuv2_format
class MTANFormat(NYUv2Format):
    """MTAN/LibMTL preprocessed npy; its `val` folder is NYU's test split.

    MTAN's own loader `np.moveaxis(…, -1, 0)`s image, depth and normal, so they are stored
    channels-last ([H,W,3], [H,W,1]); channels-first arrays are accepted too.
    """

    name = "mtan"
    required = ("train/image", "val/image")
    split_dirs: ClassVar[dict[str, str]] = {"train": "train", "test": "val"}
    layout = (
        "mtan: {train,val}/image/{i}.npy float [0,1] [H,W,3]; {train,val}/label/{i}.npy "
        "-1..12 (-1 = ignore); {train,val}/depth/{i}.npy metres [H,W,1] (0 = invalid); "
        "{train,val}/normal/{i}.npy unit [H,W,3] (all-zero = invalid); channels-first accepted"
    )

    def class_counts(self) -> tuple[int, ...]:
        return (13,)

    def fields(self, num_classes: int | None) -> dict[str, Field]:
        return {
            "image": Field(
                "{split}/image/{id}.npy", "float [H,W,3] in [0,1]", _npy(image_from_float)
            ),
            "seg": Field(
                "{split}/label/{id}.npy",
                "labels [H,W] in -1..12 (-1 = ignore)",
                _npy(partial(seg_from_labels, ignore=-1, first=0, num_classes=13)),
            ),
            "depth": Field(
                "{split}/depth/{id}.npy", "finite depth [H,W,1] in metres", _npy(depth_from_metres)
            ),
            "normal": Field(
                "{split}/normal/{id}.npy", "finite normals [H,W,3]", _npy(normal_from_float)
            ),
        }

    def sample_ids(self, root: Path) -> dict[str, list[str]]:
        ids = {}
        for split, folder in self.split_dirs.items():
            stems = [p.stem for p in (root / folder / "image").glob("*.npy")]
            ids[split] = sorted((s for s in stems if s.isdigit()), key=int)
        return ids


@register_nyuv2_format
class NYUDMTFormat(NYUv2Format):
    """Vandenhende's NYUD-MT: flat folders per kind, splits as id lists in `gt_sets/`.

    Vandenhende's and ASTMT's copies list only `train.txt` and `val.txt` (val = NYU's 654 test
    images); such a root has no test list, and the datamodule evaluates on val (`notes`).
    """

    name = "nyud_mt"
    #: plus gt_sets/test.txt or gt_sets/val.txt (`matches`)
    required = ("images", "gt_sets/train.txt")
    split_dirs: ClassVar[dict[str, str]] = {"train": "", "val": "", "test": ""}
    layout = (
        "nyud_mt: images/{id}.jpg; segmentation/{id}.png (0 = void, 1..40); depth/{id}.npy "
        "metres; normals/{id}.npy [H,W,3] in [-1,1]; edge/{id}.npy {0,1}; "
        "gt_sets/train.txt and test.txt and/or val.txt (no test.txt: test = val)"
    )

    def matches(self, root: Path) -> bool:
        sets = root / "gt_sets"
        lists = (sets / "test.txt").exists() or (sets / "val.txt").exists()
        return super().matches(root) and lists

    def notes(self, root: Path) -> list[str]:
        sets = root / "gt_sets"
        if (sets / "test.txt").exists() or not (sets / "val.txt").exists():
            return []
        return [
            f"{root}: no {sets / 'test.txt'}; the test split is the val split "
            f"({sets / 'val.txt'}), as in Vandenhende's and ASTMT's code: test metrics are val "
            "metrics"
        ]

    def class_counts(self) -> tuple[int, ...]:
        return (40,)

    def fields(self, num_classes: int | None) -> dict[str, Field]:
        return {
            "image": Field(
                "images/{id}.jpg",
                "an RGB jpg",
                _png(image_from_uint8, "RGB"),
            ),
            "seg": Field(
                "segmentation/{id}.png",
                "a uint8 png [H,W] in 0..40 (0 = void)",
                _png(partial(seg_from_labels, ignore=0, first=1, num_classes=40), "L", "P"),
            ),
            "depth": Field(
                "depth/{id}.npy", "finite depth [H,W] in metres", _npy(depth_from_metres)
            ),
            "normal": Field(
                "normals/{id}.npy", "finite normals [H,W,3] in [-1,1]", _npy(normal_from_float)
            ),
            "edge": Field("edge/{id}.npy", "an edge map [H,W] in {0,1}", _npy(edge_from_binary)),
        }

    def sample_ids(self, root: Path) -> dict[str, list[str]]:
        sets = root / "gt_sets"
        return {
            s: self._listed(sets / f"{s}.txt")
            for s in self.split_dirs
            if (sets / f"{s}.txt").exists()
        }


@register_nyuv2_format
class PNGFormat(NYUv2Format):
    """PNG exports (e.g. DenseDepth / ankurhanda): 8-bit RGB, uint16 depth in mm, uint8 labels."""

    name = "png"
    required = ("train/rgb", "test/rgb")
    layout = (
        "png: {train,test}/rgb/{name}.png; {train,test}/depth/{name}.png uint16 mm (0 = "
        "invalid); {train,test}/labels_13/ and/or labels_40/{name}.png uint8 (0 = unlabeled); "
        "optional {train,test}/normals/{name}.png (v/127.5-1); optional {train,test}.txt names"
    )

    def class_counts(self) -> tuple[int, ...]:
        return (13, 40)

    def fields(self, num_classes: int | None) -> dict[str, Field]:
        k = num_classes or 13
        return {
            "image": Field(
                "{split}/rgb/{id}.png",
                "an 8-bit RGB png",
                _png(image_from_uint8, "RGB"),
            ),
            "seg": Field(
                f"{{split}}/labels_{k}/{{id}}.png",
                f"a uint8 png [H,W] in 0..{k} (0 = unlabeled)",
                _png(partial(seg_from_labels, ignore=0, first=1, num_classes=k), "L", "P"),
            ),
            "depth": Field(
                "{split}/depth/{id}.png",
                "a 16-bit png in millimetres (0 = invalid)",
                _png(partial(depth_from_metres, scale=1e-3), "I;16", "I"),
            ),
            "normal": Field(
                "{split}/normals/{id}.png",
                "an 8-bit RGB png, n = v/127.5 - 1",
                _png(normal_from_uint8, "RGB"),
            ),
        }

    def sample_ids(self, root: Path) -> dict[str, list[str]]:
        ids = {}
        for split in self.split_dirs:
            listing = root / f"{split}.txt"
            if listing.exists():
                ids[split] = self._listed(listing)
            else:
                ids[split] = sorted(p.stem for p in (root / split / "rgb").glob("*.png"))
        return ids
