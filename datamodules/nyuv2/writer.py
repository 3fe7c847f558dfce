"""Synthetic scenes written in a real NYU-v2 layout, so the file loaders run without NYU-v2.

Each format keeps its real conventions: `mtan` float npy, channels-last like MTAN's files (its
loader moves the last axis first), labels −1 for ignore, depth [H,W,1]; `nyud_mt` jpg images,
png labels with 0 = void and classes + 1, npy depth/normals/edges, `gt_sets/{train,test}.txt`;
`png` 8-bit RGB, uint16 depth in millimetres, `labels_13` and `labels_40` (the same labels)
with classes + 1, normals as
v = (n + 1)·127.5, and `{train,test}.txt` name lists. The 8 synthetic classes fill the first
8 of the format's 13 or 40.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_mtl.targets import IGNORE_INDEX, target_kind

from ..synthetic import render_sample

Scene = dict[str, np.ndarray]
#: the synthetic renderer's split ids
_SPLIT_IDS = {"train": 0, "test": 2}
#: the rendered keys written, each of the kind of its name
_SCENE_KEYS = ("image", "seg", "depth", "normal", "edge")


def _save_png(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array, dtype=np.float32))


def _list_name(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{name}\n")


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _shifted_labels(seg: np.ndarray) -> np.ndarray:
    """Classes k → k + 1, ignore → 0 (the png/nyud_mt convention)."""
    return np.where(seg == IGNORE_INDEX, 0, seg + 1).astype(np.uint8)


def _write_mtan(root: Path, split: str, name: str, s: Scene) -> None:
    folder = root / {"train": "train", "test": "val"}[split]
    _save_npy(folder / "image" / f"{name}.npy", s["image"])
    _save_npy(folder / "label" / f"{name}.npy", np.where(s["seg"] == IGNORE_INDEX, -1, s["seg"]))
    _save_npy(folder / "depth" / f"{name}.npy", s["depth"][..., None])
    _save_npy(folder / "normal" / f"{name}.npy", s["normal"])


def _write_nyud_mt(root: Path, split: str, name: str, s: Scene) -> None:
    _save_png(root / "images" / f"{name}.jpg", _uint8(s["image"]), quality=95, subsampling=0)
    _save_png(root / "segmentation" / f"{name}.png", _shifted_labels(s["seg"]))
    _save_npy(root / "depth" / f"{name}.npy", s["depth"])
    _save_npy(root / "normals" / f"{name}.npy", s["normal"])
    _save_npy(root / "edge" / f"{name}.npy", s["edge"])
    _list_name(root / "gt_sets" / f"{split}.txt", name)


def _write_png(root: Path, split: str, name: str, s: Scene) -> None:
    millimetres = np.round(s["depth"] * 1000)
    if millimetres.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"depth {s['depth'].max():.1f} m does not fit a uint16 png in mm")
    valid = s["normal"].any(axis=-1, keepdims=True)
    normal = np.where(valid, np.clip(np.round((s["normal"] + 1) * 127.5), 0, 255), 0)
    _save_png(root / split / "rgb" / f"{name}.png", _uint8(s["image"]))
    _save_png(root / split / "depth" / f"{name}.png", millimetres.astype(np.uint16))
    for k in (13, 40):
        _save_png(root / split / f"labels_{k}" / f"{name}.png", _shifted_labels(s["seg"]))
    _save_png(root / split / "normals" / f"{name}.png", normal.astype(np.uint8))
    _list_name(root / f"{split}.txt", name)


_WRITERS: dict[str, Callable[[Path, str, str, Scene], None]] = {
    "mtan": _write_mtan,
    "nyud_mt": _write_nyud_mt,
    "png": _write_png,
}


def synthetic_scene(seed: int, split: str, index: int, image_size: tuple[int, int]) -> Scene:
    """Rendered sample `index` of `split` (its dense keys) in the array layout."""
    s = render_sample(seed, _SPLIT_IDS[split], index, image_size)
    return {key: target_kind(key).to_array(s[key]) for key in _SCENE_KEYS}


def write_synthetic_nyuv2(
    root: str | Path,
    format: str = "mtan",
    num_train: int = 16,
    num_test: int = 4,
    image_size: tuple[int, int] = (288, 384),
    seed: int = 0,
) -> Path:
    """Write `num_train` + `num_test` rendered scenes into a new or empty `root` in an NYU-v2
    layout.

    Sample names: `mtan` 0..n-1 per split (as MTAN); the others a running 4-digit id across
    splits (`nyud_mt` keeps every split in one folder). Returns `root`.
    """
    if format not in _WRITERS:
        raise ValueError(f"unknown NYU-v2 format {format!r}; choose one of {list(_WRITERS)}")
    if num_train < 1 or num_test < 1:
        raise ValueError(f"need at least one train and one test scene, got {num_train}, {num_test}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; write synthetic NYU-v2 into a new folder")
    root.mkdir(parents=True, exist_ok=True)
    write, running = _WRITERS[format], 0
    for split, n in (("train", num_train), ("test", num_test)):
        for i in range(n):
            name = str(i) if format == "mtan" else f"{running:04d}"
            write(root, split, name, synthetic_scene(seed, split, i, image_size))
            running += 1
    return root
