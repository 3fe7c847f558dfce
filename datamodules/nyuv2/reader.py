"""A root resolved to one format (`Layout`): its targets, its samples, strict reading, a scan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_mtl.targets import TargetSpec

from ..base import Arrays
from ..decoding import depth_per_image_max, label_edges
from .formats import FORMATS, DepthNormalisation, Field, NYUv2DataError, NYUv2Format


@dataclass(frozen=True)
class Sample:
    """One sample: the split it is stored under, its id, and the file of every stored key."""

    split: str
    id: str
    files: dict[str, Path]


@dataclass(frozen=True)
class Layout:
    """An NYU-v2 root in one format: the keys it stores (`fields`) and its seg class count."""

    root: Path
    format: NYUv2Format
    fields: dict[str, Field]
    num_classes: int | None

    @property
    def targets(self) -> dict[str, TargetSpec]:
        """What the root provides, by batch key; `edge` is derived from seg when not stored."""
        targets = {}
        if "seg" in self.fields:
            targets["seg"] = TargetSpec("seg", num_classes=self.num_classes)
        targets.update({k: TargetSpec(k) for k in ("depth", "normal") if k in self.fields})
        if "edge" in self.fields or "seg" in self.fields:
            targets["edge"] = TargetSpec("edge")
        return targets

    @property
    def notes(self) -> list[str]:
        """What to know about how the root is read (e.g. no test list), not problems."""
        return self.format.notes(self.root)

    def samples(self) -> dict[str, list[Sample]]:
        """The samples of every split the root stores: `train`, and `test` and/or `val`
        (MTAN and PNG have no `val`; NYUD-MT may lack either)."""
        ids = self.format.sample_ids(self.root)
        return {
            split: [self.sample(split, i) for i in split_ids] for split, split_ids in ids.items()
        }

    def sample(self, split: str, sample_id: str) -> Sample:
        folder = self.format.split_dirs[split]
        files = {k: f.path(self.root, folder, sample_id) for k, f in self.fields.items()}
        return Sample(split, sample_id, files)

    def load(self, sample: Sample, key: str) -> np.ndarray:
        """One stored key of a sample in the array layout; any failure names the file."""
        path, field = sample.files[key], self.fields[key]
        try:
            return field.read(path)
        except FileNotFoundError as e:
            raise NYUv2DataError(f"{path}: missing file; expected {field.expected}") from e
        except Exception as e:  # decoders and PIL/numpy raise many types on bad files
            raise NYUv2DataError(f"{path}: {e}; expected {field.expected}") from e

    def check_shapes(self, sample: Sample, arrays: Arrays) -> None:
        """Every array must match the image's height and width."""
        size = arrays["image"].shape[:2]
        for key, value in arrays.items():
            if value.shape[:2] != size:
                raise NYUv2DataError(
                    f"{sample.files[key]}: size {value.shape[:2]}, expected the image's {size} "
                    f"({sample.files['image']})"
                )

    def read(
        self, sample: Sample, keys: Sequence[str], depth_normalisation: DepthNormalisation = "none"
    ) -> Arrays:
        """`image` plus `keys` of a sample in the array layout (edges derived if not stored),
        depth scaled as `depth_normalisation` says."""
        derive_edge = "edge" in keys and "edge" not in self.fields
        stored = [k for k in keys if k in self.fields]
        if derive_edge and "seg" not in stored:
            stored.append("seg")
        arrays = {k: self.load(sample, k) for k in ("image", *stored)}
        self.check_shapes(sample, arrays)
        if "depth" in arrays and depth_normalisation == "per_image_max":
            arrays["depth"] = depth_per_image_max(arrays["depth"])
        if derive_edge:
            arrays["edge"] = label_edges(arrays["seg"])
        return {k: arrays[k] for k in ("image", *keys)}


def describe_layouts() -> str:
    """One line per format: the files it needs."""
    return "\n".join(f"  - {f.layout}" for f in FORMATS.values())


def detect(root: Path, format: str = "auto") -> NYUv2Format:
    """The format of an existing `root` (`auto`: the one whose required paths all exist)."""
    if format != "auto":
        fmt = FORMATS.get(format)
        if not fmt.matches(root):
            raise NYUv2DataError(
                f"{root} is not in the {format} layout: it needs {list(fmt.required)}"
                f"\n  - {fmt.layout}"
            )
        return fmt
    found = [f for f in FORMATS.values() if f.matches(root)]
    if len(found) != 1:
        what = "no" if not found else f"several ({[f.name for f in found]})"
        required = "; ".join(f"{f.name}: {list(f.required)}" for f in FORMATS.values())
        raise NYUv2DataError(
            f"{root} matches {what} NYU-v2 layout(s); pass format=. Required paths per format: "
            f"{required}. Files:\n{describe_layouts()}"
        )
    return found[0]


def layout_of(fmt: NYUv2Format, root: Path | None, num_classes: int | None = None) -> Layout:
    """`root` read as `fmt`: the keys whose folders exist (all of them if `root` is None, i.e.
    what the synthetic writer produces) and the seg class count (the first stored one if None)."""
    if num_classes is not None and num_classes not in fmt.class_counts():
        raise ValueError(f"{fmt.name} stores {list(fmt.class_counts())} classes, not {num_classes}")

    def present(field: Field) -> bool:
        return root is None or field.path(root, fmt.split_dirs["train"], "_").parent.is_dir()

    counts = [num_classes] if num_classes else fmt.class_counts()
    k = next((c for c in counts if present(fmt.fields(c)["seg"])), None)
    if num_classes and k is None:
        folder = Path(fmt.fields(num_classes)["seg"].pattern).parent
        raise NYUv2DataError(f"{root} has no {num_classes}-class labels ({folder} is missing)")
    fields = {key: f for key, f in fmt.fields(k).items() if present(f)}
    return Layout(root or Path(), fmt, fields, k)


def resolve(root: str | Path, format: str = "auto", num_classes: int | None = None) -> Layout:
    """The layout of an existing NYU-v2 root; a missing root explains how to get one."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"NYU-v2 root {root} does not exist. NYU-v2 cannot be downloaded here; put a copy in "
            f"one of these layouts:\n{describe_layouts()}\nor pass synthesize=N to write N "
            "synthetic scenes there in the chosen layout."
        )
    return layout_of(detect(root, format), root, num_classes)


def check_nyuv2(
    root: str | Path, format: str = "auto", num_classes: int | None = None
) -> list[str]:
    """Every problem of an NYU-v2 root, reading every file of every split (empty = fine)."""
    try:
        layout = resolve(root, format, num_classes)
        splits = layout.samples()
    except (OSError, ValueError) as e:
        return [str(e)]
    evaluated = "test" if "test" in splits else "val"  # NYUD-MT without test.txt: val
    problems = [
        f"{layout.root}: split {s!r} has no samples" for s in ("train", evaluated) if not splits[s]
    ]
    owner: dict[Path, str] = {}
    for split, samples in splits.items():
        for sample in samples:
            image = sample.files["image"]
            if owner.setdefault(image, split) != split:
                problems.append(f"{image}: listed in both {owner[image]!r} and {split!r}")
            arrays = {}
            for key in layout.fields:
                try:
                    arrays[key] = layout.load(sample, key)
                except NYUv2DataError as e:
                    problems.append(str(e))
            if "image" in arrays:
                try:
                    layout.check_shapes(sample, arrays)
                except NYUv2DataError as e:
                    problems.append(str(e))
    return problems
