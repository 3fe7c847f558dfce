"""Joint transforms: nearest targets, depth under zoom, flips, invalid pixels, layout, arguments."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.transforms import JointTransform
from lightning_mtl.targets import TargetSpec

SIZE = (16, 24)
LABELS = (0, 1, 2, 255)


def _sample(shape: tuple[int, int] = SIZE, seed: int = 0, holes: float = 0.3) -> dict:
    """Random arrays in the array layout; invalid depth, zero normals and 255 labels coincide."""
    rng = np.random.default_rng(seed)
    invalid = rng.random(shape) < holes
    normal = rng.normal(size=(*shape, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    seg = rng.choice(LABELS[:-1], size=shape).astype(np.int64)
    seg[invalid] = 255
    return {
        "image": rng.random((*shape, 3), dtype=np.float32),
        "seg": seg,
        "depth": np.where(invalid, 0.0, rng.uniform(2.0, 3.0, shape)).astype(np.float32),
        "normal": np.where(invalid[..., None], 0.0, normal).astype(np.float32),
        "edge": (rng.random(shape) < 0.5).astype(np.float32),
        "smiling": np.float32(1.0),
    }


def _resize(array: np.ndarray, interpolation: int) -> np.ndarray:
    return cv2.resize(array, SIZE[::-1], interpolation=interpolation)


@pytest.mark.parametrize("train", [True, False])
def test_output_layout(train):
    arrays = _sample((20, 30))
    arrays["image"][:4] = 1.0  # saturated pixels: jitter must not push them out of [0, 1]
    arrays["image"][4:8] = 0.0
    transform = JointTransform(SIZE, train=train, seed=0)
    for _ in range(5):
        out = transform(arrays)
        assert out.keys() == arrays.keys()
        assert out["image"].shape == (*SIZE, 3) and out["image"].dtype == np.float32
        assert out["normal"].shape == (*SIZE, 3) and out["normal"].dtype == np.float32
        assert out["seg"].shape == SIZE and out["seg"].dtype == np.int64
        for key in ("depth", "edge"):
            assert out[key].shape == SIZE and out[key].dtype == np.float32
        assert out["smiling"] is arrays["smiling"]
        assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0


def test_image_only():
    out = JointTransform(SIZE, train=True, seed=0)({"image": _sample()["image"]})
    assert out.keys() == {"image"} and out["image"].shape == (*SIZE, 3)


@pytest.mark.parametrize("shape", [(40, 60), (8, 12)], ids=["downscale", "upscale"])
def test_eval_is_a_plain_deterministic_resize(shape):
    arrays = _sample(shape)
    image_interpolation = cv2.INTER_AREA if shape[0] > SIZE[0] else cv2.INTER_LINEAR
    outs = [JointTransform(SIZE, train=False, seed=seed)(arrays) for seed in (0, 1)]
    for out in outs:
        np.testing.assert_array_equal(out["image"], _resize(arrays["image"], image_interpolation))
        for key in ("depth", "normal", "edge"):  # no depth rescaling for a plain resize
            np.testing.assert_allclose(
                out[key], _resize(arrays[key], cv2.INTER_NEAREST_EXACT), rtol=1e-6
            )
        seg = _resize(arrays["seg"].astype(np.int32), cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(out["seg"], seg)
    for key in arrays:
        np.testing.assert_array_equal(outs[0][key], outs[1][key])


def test_training_resamples_targets_with_nearest():
    arrays = _sample((20, 30))
    transform = JointTransform(SIZE, train=True, flip_label_map=[1, 0, 2], seed=0)
    for _ in range(10):
        out = transform(arrays)
        assert set(np.unique(out["seg"])) <= set(LABELS)
        assert 255 in out["seg"]
        assert set(np.unique(out["edge"])) <= {0.0, 1.0}


def test_zoom_divides_depth_and_narrows_the_view():
    arrays = _sample(SIZE, holes=0.0)
    cells = (np.indices(SIZE) // 2).sum(axis=0) % 2 == 0  # 2x2 checkerboard: holes in any crop
    arrays["depth"] = np.where(cells, 0.0, 4.0).astype(np.float32)
    arrays["seg"] = np.arange(SIZE[0] * SIZE[1]).reshape(SIZE)  # every pixel its own label
    transform = JointTransform(SIZE, train=True, scale_range=(2.0, 2.0), seed=0)
    for _ in range(5):
        out = transform(arrays)
        assert set(np.unique(out["depth"])) == {0.0, 2.0}
        # a 2x zoom shows about half the height and width: at most (H/2 + 1)(W/2 + 1) pixels
        assert len(np.unique(out["seg"])) <= (SIZE[0] // 2 + 1) * (SIZE[1] // 2 + 1)


def test_invalid_pixels_stay_invalid_and_normals_unit():
    arrays = _sample((20, 30))
    scale = np.random.default_rng(1).uniform(0.5, 2.0, (20, 30, 1)).astype(np.float32)
    arrays["normal"] *= scale  # not unit: the transform must re-normalise
    transform = JointTransform(SIZE, train=True, scale_range=(1.0, 1.5), seed=0)
    for _ in range(10):
        out = transform(arrays)
        invalid = out["depth"] == 0
        assert invalid.any() and not invalid.all()
        np.testing.assert_array_equal(np.all(out["normal"] == 0, axis=-1), invalid)
        np.testing.assert_array_equal(out["seg"] == 255, invalid)
        valid_depth = out["depth"][~invalid]  # 2..3 m divided by a zoom in 1..1.5, nothing mixed
        assert valid_depth.min() >= 2.0 / 1.5 and valid_depth.max() <= 3.0
        np.testing.assert_allclose(np.linalg.norm(out["normal"][~invalid], axis=-1), 1.0, atol=1e-5)


def _flipped(arrays: dict, label_map: list[int]) -> dict:
    lut = np.array([*label_map, *range(len(label_map), 256)])
    flipped = {key: np.fliplr(value) for key, value in arrays.items() if np.ndim(value) >= 2}
    flipped["seg"] = lut[flipped["seg"]]
    flipped["normal"] = flipped["normal"] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    return flipped


def test_flip_negates_normal_x_and_maps_labels():
    arrays = _sample(SIZE)
    label_map = [1, 0, 2]
    expected = {False: arrays, True: _flipped(arrays, label_map)}
    transform = JointTransform(
        SIZE,
        train=True,
        scale_range=(1.0, 1.0),
        color_jitter=False,
        flip_label_map=label_map,
        seed=0,
    )
    seen = set()
    for _ in range(12):
        out = transform(arrays)
        flipped = not np.array_equal(out["image"], arrays["image"])
        seen.add(flipped)
        for key in ("image", "seg", "depth", "normal", "edge"):
            np.testing.assert_allclose(out[key], expected[flipped][key], atol=1e-6, err_msg=key)
    assert seen == {False, True}


def test_targets_give_the_kind_of_each_key():
    """A `seg` target under another key is flipped as seg; keys not in `targets` pass through."""
    arrays = _sample(SIZE)
    arrays["parts"] = arrays.pop("seg")
    targets = {"parts": TargetSpec("seg", num_classes=3), "smiling": TargetSpec("binary")}
    transform = JointTransform(
        SIZE,
        train=True,
        scale_range=(1.0, 1.0),
        color_jitter=False,
        flip_label_map=[1, 0, 2],
        seed=0,
        targets=targets,
    )
    seen = set()
    for _ in range(12):
        out = transform(arrays)
        flipped = not np.array_equal(out["image"], arrays["image"])
        seen.add(flipped)
        parts = _flipped({"seg": arrays["parts"], "normal": arrays["normal"]}, [1, 0, 2])["seg"]
        np.testing.assert_array_equal(out["parts"], parts if flipped else arrays["parts"])
        assert out["parts"].dtype == np.int64
        assert out["depth"] is arrays["depth"] and out["smiling"] is arrays["smiling"]
    assert seen == {False, True}


def test_no_flip_without_hflip():
    arrays = _sample(SIZE)
    transform = JointTransform(
        SIZE, train=True, scale_range=(1.0, 1.0), hflip=False, color_jitter=False, seed=0
    )
    for _ in range(8):
        np.testing.assert_array_equal(transform(arrays)["image"], arrays["image"])


def test_seed_reproduces_training_samples():
    arrays = _sample((20, 30))
    first, second = (JointTransform(SIZE, train=True, seed=3) for _ in range(2))
    for _ in range(3):
        a, b = first(arrays), second(arrays)
        for key in arrays:
            np.testing.assert_array_equal(a[key], b[key])


class _Repeat(Dataset):
    def __init__(self, transform: JointTransform) -> None:
        self.arrays = _sample((20, 30))
        self.transform = transform

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(self.arrays)["depth"])


def test_dataloader_workers_draw_different_augmentations():
    loader = DataLoader(_Repeat(JointTransform(SIZE, train=True, seed=0)), num_workers=2)
    depths = [batch[0] for batch in loader]  # workers alternate: 0, 1, 0, 1, ...
    assert not all(torch.equal(a, b) for a, b in zip(depths[::2], depths[1::2], strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": (0, 8)}, "image_size"),
        ({"image_size": (8,)}, "image_size"),
        ({"image_size": (8.0, 8)}, "image_size"),
        ({"image_size": (True, 8)}, "image_size"),
        ({"scale_range": (0.5, 1.0)}, "scale_range"),
        ({"scale_range": (2.0, 1.5)}, "scale_range"),
        ({"flip_label_map": [0, 0, 1]}, "flip_label_map"),
        ({"flip_label_map": [1, 2]}, "flip_label_map"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointTransform(**{"image_size": SIZE, "train": True, **kwargs})
