"""One training sample: a rendered scene plus sensor effects, edges and image-level labels.

A sample is a pure function of `(seed, split_id, index, image_size)`.
"""

from __future__ import annotations

import numpy as np

from lightning_mtl.targets import IGNORE_INDEX

from .raycast import Render, render
from .scene import CLASS_IDS, sample_scene

#: image-level binary labels, each a documented function of the clean render
BINARY_LABELS: dict[str, str] = {
    "sphere": "spheres cover at least 2% of the image",
    "cluttered": "at least 4 primitives are visible (each covering at least 0.2% of the image)",
}
_SPHERE_FRACTION = 0.02
_CLUTTER_COUNT = 4
_VISIBLE_FRACTION = 0.002


def edges(instance: np.ndarray) -> np.ndarray:
    """1 where a pixel's id differs from any 4-neighbour's (flip-symmetric, 2 px wide)."""
    e = np.zeros(instance.shape, dtype=bool)
    dv = instance[1:] != instance[:-1]
    dh = instance[:, 1:] != instance[:, :-1]
    e[1:] |= dv
    e[:-1] |= dv
    e[:, 1:] |= dh
    e[:, :-1] |= dh
    return e


def image_labels(r: Render) -> dict[str, bool]:
    """The `BINARY_LABELS` of a clean render."""
    n = r.semantic.size
    prim_ids = np.unique(r.instance[r.semantic >= CLASS_IDS["box"]])
    visible = sum(np.count_nonzero(r.instance == i) >= _VISIBLE_FRACTION * n for i in prim_ids)
    return {
        "sphere": np.count_nonzero(r.semantic == CLASS_IDS["sphere"]) >= _SPHERE_FRACTION * n,
        "cluttered": visible >= _CLUTTER_COUNT,
    }


def _blob(rng: np.random.Generator, shape: tuple[int, int], prob: float) -> np.ndarray:
    """With probability `prob`, a random ellipse mask of 3–12% of the image's side; else empty."""
    if rng.random() >= prob:
        return np.zeros(shape, dtype=bool)
    h, w = shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(0.03, 0.12, size=2) * max(h, w)
    y, x = np.ogrid[:h, :w]
    return ((y + 0.5 - cy) / ry) ** 2 + ((x + 0.5 - cx) / rx) ** 2 <= 1


def render_sample(
    seed: int, split_id: int, index: int, image_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Render sample `index` of a split as numpy arrays in the batch layout (no batch dim).

    Sensor effects: Gaussian RGB noise; depth and normals invalid (0) on windows (glass) and in
    a random blob; seg unlabeled (255) in another random blob.
    """
    rng = np.random.default_rng([seed, split_id, index])
    r = render(sample_scene(rng, image_size))
    no_depth = (r.semantic == CLASS_IDS["window"]) | _blob(rng, image_size, 0.5)
    unlabeled = _blob(rng, image_size, 0.5)
    noise = rng.normal(0.0, rng.uniform(0.005, 0.02), size=r.rgb.shape)
    sample = {
        "image": np.clip(r.rgb + noise, 0.0, 1.0).astype(np.float32),
        "seg": np.where(unlabeled, IGNORE_INDEX, r.semantic),
        "depth": np.where(no_depth, 0.0, r.depth)[None].astype(np.float32),
        "normal": np.where(no_depth, 0.0, r.normal).astype(np.float32),
        "edge": edges(r.instance)[None].astype(np.float32),
    }
    for key, value in image_labels(r).items():
        sample[key] = np.float32(value)
    return sample
