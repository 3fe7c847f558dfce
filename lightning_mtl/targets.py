"""The batch contract between datamodules and tasks: what a batch key holds.

A datamodule declares what it provides as `TargetSpec`s by batch key; the tasks read them. Each
spec names a target kind, and `TARGET_KINDS` is the one table of what a kind's arrays are: their
layout before and in a batch, their dtype, how the joint transforms resample them and what a
zoom or a flip does to their values, and which entries are valid. `datamodules.base.to_batch`,
`datamodules.transforms.JointTransform` and the tasks read it; a new kind is one
`register_target_kind` call. The built-in kinds, in the array layout readers produce:

- `image` float32 [H,W,3] in [0,1];
- `seg` int64 [H,W], `IGNORE_INDEX` (255) = unlabelled;
- `depth` float32 [H,W] metres, 0 = invalid;
- `normal` float32 [H,W,3] unit vectors, all-zero = invalid;
- `edge` float32 [H,W] in {0,1};
- `binary` a float32 scalar in {0,1} (one image-level label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_mtl.registry import Registry

__all__ = [
    "IGNORE_INDEX",
    "TARGET_KINDS",
    "TargetKind",
    "TargetSpec",
    "divide_by_zoom",
    "labelled",
    "list_target_kinds",
    "negate_x",
    "nonzero_vector",
    "positive",
    "register_target_kind",
    "relabel",
    "sample_kinds",
    "target_kind",
    "unit_vectors",
]

#: label value of unlabelled pixels in every `seg` target
IGNORE_INDEX = 255


@dataclass(frozen=True)
class TargetSpec:
    """What a datamodule provides under one batch key.

    `kind` names the target kind (`seg`, `depth`, `normal`, `edge`, `binary`), which is also the
    built-in task kind that reads it; `num_classes` is set for `seg`.
    """

    kind: str
    num_classes: int | None = None


torch.serialization.add_safe_globals([TargetSpec])  # stored in checkpoints' hyperparameters

Resampling = Literal["image", "nearest"]
#: (values, zoom s) -> the values after zooming in by s
ZoomRule = Callable[[np.ndarray, float], np.ndarray]
#: (values, label_lut) -> the values after a horizontal flip; `label_lut[c]` is the label of
#: class c after the flip (None: classes keep their labels)
FlipRule = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class TargetKind:
    """The rules of one kind of array in a sample (the image or a target).

    Layouts name the axes: `H`, `W`, `C` (channels), `1` (a unit axis), "" for a scalar.
    `array_layout` is what readers return and the joint transforms take, `batch_layout` what a
    batch holds per sample; `dtype` is the same in both. `resampling`: "image" = like the image
    (linear / area, photometric jitter), "nearest" = pixel-centre nearest (labels stay labels,
    invalid values never mix into valid ones), None = not resampled (image-level values).
    After the geometric ops the transforms apply `on_zoom`, then cast to `dtype`, then
    `on_hflip` (if flipped) and last `on_resample` (always: it restores the values' constraint);
    None leaves the values as they are. `valid(target)` marks the valid entries of a target in
    the batch layout, with or without a batch axis (None: all are valid).
    """

    name: str
    array_layout: str
    batch_layout: str
    dtype: str
    resampling: Resampling | None
    on_zoom: ZoomRule | None = None
    on_hflip: FlipRule | None = None
    on_resample: Callable[[np.ndarray], np.ndarray] | None = None
    valid: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        axes = self.array_layout
        if set(axes) - set("HWC") or len(set(axes)) != len(axes):
            raise ValueError(f"target kind {self.name!r}: array_layout {axes!r} is not of H, W, C")
        if sorted(self.batch_layout.replace("1", "")) != sorted(axes):
            raise ValueError(
                f"target kind {self.name!r}: batch_layout {self.batch_layout!r} must hold the "
                f"axes of array_layout {axes!r} (plus unit axes '1')"
            )
        if self.resampling not in ("image", "nearest", None):
            raise ValueError(f"target kind {self.name!r}: unknown resampling {self.resampling!r}")
        if self.resampling is not None and not {"H", "W"} <= set(axes):
            raise ValueError(f"target kind {self.name!r}: only [H,W,…] arrays can be resampled")

    def to_batch(self, value: Any) -> Tensor:
        """`value` in the array layout as a fresh, C-contiguous batch-layout tensor of `dtype`."""
        value = _relayout(np.asarray(value), self.array_layout, self.batch_layout, self.name)
        return torch.from_numpy(np.array(value, dtype=self.dtype, order="C"))  # 0-d stays 0-d

    def to_array(self, value: np.ndarray) -> np.ndarray:
        """`value` in the batch layout as a view in the array layout (dtype kept)."""
        return _relayout(np.asarray(value), self.batch_layout, self.array_layout, self.name)


def _relayout(value: np.ndarray, source: str, target: str, name: str) -> np.ndarray:
    """`value` with axes `source` rearranged to `target` (unit axes `1` dropped or added)."""
    if value.ndim != len(source):
        layout = f"[{','.join(source)}]" if source else "a scalar"
        raise ValueError(f"a {name!r} array has shape {value.shape}, expected {layout}")
    value = np.squeeze(value, axis=tuple(i for i, axis in enumerate(source) if axis == "1"))
    kept = source.replace("1", "")
    value = value.transpose([kept.index(axis) for axis in target if axis != "1"])
    return np.expand_dims(value, tuple(i for i, axis in enumerate(target) if axis == "1"))


def divide_by_zoom(depth: np.ndarray, zoom: float) -> np.ndarray:
    """Zooming in by s makes everything look s times closer (the MTAN/Eigen convention)."""
    return depth / np.float32(zoom)


def relabel(seg: np.ndarray, label_lut: np.ndarray | None) -> np.ndarray:
    """Labels after a flip: left/right classes swap as `label_lut` says."""
    return seg if label_lut is None else label_lut[seg]


def negate_x(normal: np.ndarray, label_lut: np.ndarray | None) -> np.ndarray:
    """A mirrored surface faces the other way along x (a new array; `label_lut` is unused)."""
    flipped = normal.copy()
    flipped[..., 0] = -flipped[..., 0]
    return flipped


def unit_vectors(normal: np.ndarray) -> np.ndarray:
    """Normals rescaled to unit length; all-zero (invalid) ones stay all-zero."""
    norm = np.linalg.norm(normal, axis=-1, keepdims=True)
    return np.divide(normal, norm, out=np.zeros_like(normal), where=norm > 0)


def labelled(seg: Tensor) -> Tensor:
    """Pixels with a class label (not `IGNORE_INDEX`)."""
    return seg != IGNORE_INDEX


def positive(depth: Tensor) -> Tensor:
    """Entries with a measured depth (> 0; 0 = invalid)."""
    return depth > 0


def nonzero_vector(normal: Tensor) -> Tensor:
    """Pixels whose normal is not all-zero; [C,H,W] → [H,W], [N,C,H,W] → [N,H,W]."""
    return (normal != 0).any(-3)


#: target kinds by name: the built-in ones below and any registered with `register_target_kind`
TARGET_KINDS: Registry[TargetKind] = Registry("target kind")


def register_target_kind(kind: TargetKind) -> TargetKind:
    """Make `kind` known under its name (datamodules may then declare targets of that kind)."""
    TARGET_KINDS.register(kind.name, kind)
    return kind


def target_kind(name: str) -> TargetKind:
    """The kind registered as `name`, or a ValueError listing the kinds."""
    return TARGET_KINDS.get(name)


def list_target_kinds() -> list[str]:
    """The registered target kinds."""
    return TARGET_KINDS.names()


def sample_kinds(targets: Mapping[str, TargetSpec]) -> dict[str, TargetKind]:
    """The kind of every key of a sample: `image` first, then each target's by batch key."""
    kinds = {"image": target_kind("image")}
    kinds.update({key: target_kind(spec.kind) for key, spec in targets.items()})
    return kinds


register_target_kind(TargetKind("image", "HWC", "CHW", "float32", resampling="image"))
register_target_kind(
    TargetKind("seg", "HW", "HW", "int64", resampling="nearest", on_hflip=relabel, valid=labelled)
)
register_target_kind(
    TargetKind(
        "depth",
        "HW",
        "1HW",
        "float32",
        resampling="nearest",
        on_zoom=divide_by_zoom,
        valid=positive,
    )
)
register_target_kind(
    TargetKind(
        "normal",
        "HWC",
        "CHW",
        "float32",
        resampling="nearest",
        on_hflip=negate_x,
        on_resample=unit_vectors,
        valid=nonzero_vector,
    )
)
register_target_kind(TargetKind("edge", "HW", "1HW", "float32", resampling="nearest"))
register_target_kind(TargetKind("binary", "", "", "float32", resampling=None))
