"""Strict decoding of one stored array into the array layout of its target kind.

Shared by the file-backed datamodules (NYU-v2's formats, manifests): each converter takes the
array a file holds and rejects anything that would give a silently wrong sample (wrong shape,
labels out of range, NaN/inf); the callers re-raise failures naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_mtl.targets import IGNORE_INDEX


def load_npy(path: Path) -> np.ndarray:
    """The array of a `.npy` file (no pickles)."""
    return np.load(path, allow_pickle=False)


def load_image(path: Path, modes: Sequence[str]) -> np.ndarray:
    """The pixels of an image file (png, jpg, tiff, …) whose PIL mode is one of `modes`."""
    with Image.open(path) as im:
        if im.mode not in modes:
            raise ValueError(f"image mode {im.mode}, expected one of {list(modes)}")
        im.load()
        return np.asarray(im)


def channels_last(a: np.ndarray, c: int) -> np.ndarray:
    """[H,W,c] from [H,W,c] or [c,H,W] (and from [H,W] when c == 1)."""
    if a.ndim == 2 and c == 1:
        return a[..., None]
    if a.ndim == 3 and a.shape[-1] == c:
        return a
    if a.ndim == 3 and a.shape[0] == c:
        return np.moveaxis(a, 0, -1)
    raise ValueError(f"shape {a.shape}, expected [H,W,{c}] or [{c},H,W]")


def finite(a: np.ndarray) -> np.ndarray:
    """`a` as float32, or an error when it is not real numbers or holds NaN/inf."""
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"dtype {a.dtype}, expected real numbers")
    if not np.isfinite(a).all():
        raise ValueError("contains NaN or inf")
    return a.astype(np.float32)


def image_from_float(a: np.ndarray) -> np.ndarray:
    """A float image in [0,1], [H,W,3] or [3,H,W] (the MTAN npy)."""
    a = finite(channels_last(a, 3))
    if a.min() < 0 or a.max() > 1:
        raise ValueError(f"values in [{a.min():.3g}, {a.max():.3g}], expected [0, 1]")
    return a


def image_from_uint8(a: np.ndarray) -> np.ndarray:
    """An 8-bit RGB image → float [0,1]."""
    return a.astype(np.float32) / 255.0


def seg_from_labels(a: np.ndarray, ignore: int, first: int, num_classes: int) -> np.ndarray:
    """Stored labels (`ignore` = unlabeled, `first`.. = classes) → 0..num_classes-1, 255."""
    if a.ndim != 2:
        raise ValueError(f"shape {a.shape}, expected [H,W]")
    a = finite(a)
    last = first + num_classes - 1
    bad = (a != np.round(a)) | (((a < first) | (a > last)) & (a != ignore))
    if bad.any():
        raise ValueError(f"label {a[bad].flat[0]:g} outside {ignore} (ignore) and {first}..{last}")
    return np.where(a == ignore, IGNORE_INDEX, a - first).astype(np.int64)


def depth_from_metres(a: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Depth [H,W] (or with a unit channel) × `scale` → metres; 0 = invalid, negative rejected."""
    a = finite(channels_last(a, 1)[..., 0]) * np.float32(scale)
    if a.min() < 0:
        raise ValueError(f"negative depth {a.min():g}, expected metres >= 0 (0 = invalid)")
    return a


def depth_per_image_max(depth: np.ndarray) -> np.ndarray:
    """Depth divided by its largest value, so valid depth lies in (0, 1] and 0 stays invalid
    (an image without valid depth stays all 0)."""
    top = depth.max(initial=0.0)
    return (depth / top if top > 0 else depth).astype(np.float32)


def normal_from_float(a: np.ndarray) -> np.ndarray:
    """Normals [H,W,3] or [3,H,W], unit vectors, all-zero = invalid."""
    return finite(channels_last(a, 3))


def normal_from_uint8(a: np.ndarray) -> np.ndarray:
    """RGB png normals, n = v/127.5 − 1 re-normalised; v = (0,0,0) = invalid → 0."""
    n = a.astype(np.float32) / 127.5 - 1.0
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = a.any(axis=-1, keepdims=True) & (norm > 0)
    return np.where(valid, n / np.where(valid, norm, 1.0), 0.0).astype(np.float32)


def edge_from_binary(a: np.ndarray) -> np.ndarray:
    """An edge map in {0,1}, [H,W] or with a unit channel."""
    a = finite(channels_last(a, 1)[..., 0])
    if not np.isin(a, (0, 1)).all():
        raise ValueError("values other than 0 and 1")
    return a


def label_edges(seg: np.ndarray) -> np.ndarray:
    """Edges derived from labels: 1 on both pixels of every 4-neighbour pair with different
    labels, pairs touching an ignored (255) pixel excluded (2 px wide, flip-symmetric)."""
    valid = seg != IGNORE_INDEX
    e = np.zeros(seg.shape, dtype=bool)
    dv = (seg[1:] != seg[:-1]) & valid[1:] & valid[:-1]
    dh = (seg[:, 1:] != seg[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    e[1:] |= dv
    e[:-1] |= dv
    e[:, 1:] |= dh
    e[:, :-1] |= dh
    return e.astype(np.float32)
