"""Joint augmentation of an image and its dense targets, in the array layout of their kinds.

Albumentations resamples the image and every target whose kind (`lightning_mtl.targets`) is
resampled with one set of random parameters ("nearest" kinds with pixel-centre nearest
interpolation, `INTER_NEAREST_EXACT`, so labels stay labels, an invalid 0 never mixes into
valid depth or normals, and targets stay aligned with the image; OpenCV's plain
`INTER_NEAREST` is shifted by up to a source pixel). What a geometric op means for a target's
*values* is then applied from the parameters albumentations recorded, by the kind's rules:
zooming in by s divides depth by s, a horizontal flip negates the normal x component and swaps
left/right labels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

# albumentations asks PyPI for a newer version at import; a training job should not phone home
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
from torch.utils.data import get_worker_info

from lightning_mtl.targets import IGNORE_INDEX, TARGET_KINDS, TargetKind, TargetSpec, sample_kinds

from .base import Arrays

#: the albumentations target type of each resampling
_ALBUMENTATIONS_TARGETS = {"image": "image", "nearest": "mask"}
#: moderate photometric jitter, applied to the image only
COLOR_JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}


class JointTransform:
    """`arrays -> arrays`: resize (eval) or scale-crop, flip and jitter (train) all keys jointly.

    `image_size` is (H, W). In training the image is resized to `image_size`, scaled up by a
    zoom s drawn from `scale_range` and randomly cropped back to `image_size`; depth is then
    divided by s. `flip_label_map[c]` is the label of class c after a horizontal flip.
    `targets` gives the kind of each batch key (None: keys named after a kind are of that
    kind); keys of kinds that are not resampled, and keys of no kind, pass through unchanged.
    `seed` makes the sampling reproducible; inside a DataLoader worker the generator is
    reseeded from the worker's torch seed (albumentations 2.0 does not, so every worker would
    otherwise draw the same augmentations) unless `set_random_seed` is called per sample, as
    `MultiTaskDataset` does with the seeds of a `ResumableSampler` (train loaders).
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        train: bool,
        scale_range: tuple[float, float] = (1.0, 1.5),
        hflip: bool = True,
        color_jitter: bool = True,
        flip_label_map: Sequence[int] | None = None,
        seed: int | None = None,
        targets: Mapping[str, TargetSpec] | None = None,
    ) -> None:
        height, width = _check_image_size(image_size)
        self.kinds: dict[str, TargetKind] = (
            dict(TARGET_KINDS) if targets is None else sample_kinds(targets)
        )
        #: the keys resampled with the image, as albumentations target types
        self.resampled = {
            key: _ALBUMENTATIONS_TARGETS[kind.resampling]
            for key, kind in self.kinds.items()
            if key != "image" and kind.resampling is not None
        }
        low, high = _check_scale_range(scale_range)
        self.flip_lut = None if flip_label_map is None else _flip_lut(flip_label_map)
        ops: list[Any] = [
            A.Resize(height, width, interpolation=cv2.INTER_LINEAR, area_for_downscale="image")
        ]
        if train:
            ops += [
                A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),
                A.RandomCrop(height, width),
            ]
            if hflip:
                ops.append(A.HorizontalFlip(p=0.5))
            if color_jitter:
                ops.append(A.ColorJitter(**COLOR_JITTER, p=1.0))
        self.compose = A.Compose(
            ops,
            additional_targets=self.resampled,
            mask_interpolation=cv2.INTER_NEAREST_EXACT,
            save_applied_params=True,
            seed=seed,
        )
        self._worker_seed: int | None = None

    def __call__(self, arrays: Arrays) -> Arrays:
        self._reseed_in_worker()
        present = {key: arrays[key] for key in self.resampled if key in arrays}
        out = self.compose(image=arrays["image"], **present)
        applied = dict(out.pop("applied_transforms"))
        zoom = applied["RandomScale"]["scale"] if "RandomScale" in applied else 1.0
        flipped = "HorizontalFlip" in applied
        result = dict(arrays)
        for key in ("image", *present):
            result[key] = self._values(self.kinds[key], out[key], zoom, flipped)
        return result

    def _values(
        self, kind: TargetKind, value: np.ndarray, zoom: float, flipped: bool
    ) -> np.ndarray:
        """Resampled `value` with its kind's rules applied: zoom, dtype, flip, constraint."""
        if kind.on_zoom is not None:
            value = kind.on_zoom(value, zoom)
        value = value.astype(kind.dtype, copy=False)
        if flipped and kind.on_hflip is not None:
            value = kind.on_hflip(value, self.flip_lut)
        return value if kind.on_resample is None else kind.on_resample(value)

    def set_random_seed(self, seed: int) -> None:
        """Draw the next augmentation from `seed` (instead of the per-worker stream)."""
        info = get_worker_info()
        self._worker_seed = None if info is None else info.seed  # no worker reseed after this
        self.compose.set_random_seed(seed)

    def _reseed_in_worker(self) -> None:
        """Give each DataLoader worker (and each epoch's workers) its own random stream."""
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.compose.set_random_seed(info.seed)


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(image_size)
    if len(size) != 2 or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in size
    ):
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}")
    return int(size[0]), int(size[1])


def _check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    if len(scale_range) != 2 or not 1.0 <= scale_range[0] <= scale_range[1]:
        raise ValueError(
            f"scale_range must be (low, high) with 1 <= low <= high, got {scale_range!r}"
        )
    return float(scale_range[0]), float(scale_range[1])


def _flip_lut(flip_label_map: Sequence[int]) -> np.ndarray:
    """A 256-entry lookup table: classes mapped by `flip_label_map`, the rest (255) unchanged."""
    n = len(flip_label_map)
    if sorted(flip_label_map) != list(range(n)) or n > IGNORE_INDEX:
        raise ValueError(
            f"flip_label_map must be a permutation of range(n) with n <= {IGNORE_INDEX}, "
            f"got {list(flip_label_map)!r}"
        )
    lut = np.arange(IGNORE_INDEX + 1, dtype=np.int64)
    lut[:n] = flip_label_map
    return lut
