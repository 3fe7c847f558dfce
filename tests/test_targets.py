"""The target-kind table: layouts and dtypes, zoom / flip / constraint rules, valid entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.base import to_batch
from lightning_mtl.targets import (
    IGNORE_INDEX,
    TARGET_KINDS,
    TargetKind,
    TargetSpec,
    list_target_kinds,
    register_target_kind,
    sample_kinds,
    target_kind,
)

H, W = 2, 3
F32 = np.float32
#: kind -> (an array in its array layout, the expected batch shape, the expected dtype)
CASES = {
    "image": (np.arange(H * W * 3).reshape(H, W, 3) / 32, (3, H, W), torch.float32),
    "seg": (np.array([[0, 1, 2], [255, 1, 0]], dtype=np.int32), (H, W), torch.int64),
    "depth": (np.array([[0, 1.5, 2], [3, 0, 4.5]], dtype=F32), (1, H, W), torch.float32),
    "normal": (np.tile(np.array([0, 0.6, 0.8], dtype=F32), (H, W, 1)), (3, H, W), torch.float32),
    "edge": (np.array([[0, 1, 0], [1, 1, 0]], dtype=F32), (1, H, W), torch.float32),
    "binary": (F32(1.0), (), torch.float32),
}


def test_the_built_in_kinds():
    assert list_target_kinds() == ["image", "seg", "depth", "normal", "edge", "binary"]
    assert set(CASES) == set(TARGET_KINDS)


@pytest.mark.parametrize("name", CASES)
def test_to_batch_layout_and_dtype(name):
    array, shape, dtype = CASES[name]
    batch = target_kind(name).to_batch(array)
    assert batch.shape == shape and batch.dtype == dtype and batch.is_contiguous()
    # channels first: the value at (h, w, c) lands at (c, h, w); a unit channel is added
    expected = torch.from_numpy(np.array(array)).to(dtype)
    if expected.dim() == 3:
        expected = expected.permute(2, 0, 1)
    torch.testing.assert_close(batch, expected.reshape(shape), rtol=0, atol=0)
    assert not np.shares_memory(batch.numpy(), array)


@pytest.mark.parametrize("name", CASES)
def test_to_array_inverts_to_batch(name):
    array = CASES[name][0]
    kind = target_kind(name)
    np.testing.assert_array_equal(kind.to_array(kind.to_batch(array).numpy()), array)


def test_a_wrong_shape_names_the_kind_and_layout():
    with pytest.raises(ValueError, match=r"'depth' array has shape \(2, 3, 1\), expected \[H,W\]"):
        target_kind("depth").to_batch(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="expected a scalar"):
        target_kind("binary").to_batch(np.zeros(1))


def test_to_batch_of_a_sample_follows_the_kinds_of_its_keys():
    """Batch keys need not be kind names: CelebA's `male` is a `binary` target."""
    targets = {"seg": TargetSpec("seg", num_classes=3), "male": TargetSpec("binary")}
    kinds = sample_kinds(targets)
    assert list(kinds) == ["image", "seg", "male"] and kinds["male"] is target_kind("binary")
    arrays = {"image": CASES["image"][0], "seg": CASES["seg"][0], "male": np.float32(0.0)}
    batch = to_batch(arrays, kinds)
    assert list(batch) == ["image", "seg", "male"]
    assert batch["image"].shape == (3, H, W) and batch["seg"].dtype == torch.int64
    assert batch["male"].shape == () and batch["male"].item() == 0.0


def test_zoom_divides_depth_only():
    depth = np.array([[0.0, 4.0], [2.0, 6.0]], dtype=np.float32)
    zoomed = target_kind("depth").on_zoom(depth, 2.0)
    np.testing.assert_array_equal(zoomed, [[0.0, 2.0], [1.0, 3.0]])
    assert zoomed.dtype == np.float32
    assert all(target_kind(k).on_zoom is None for k in CASES if k != "depth")


def test_flip_relabels_seg_and_negates_normal_x():
    seg = np.array([[0, 1, 2, IGNORE_INDEX]])
    lut = np.arange(IGNORE_INDEX + 1)
    lut[:3] = [1, 0, 2]
    flip = target_kind("seg").on_hflip
    np.testing.assert_array_equal(flip(seg, lut), [[1, 0, 2, IGNORE_INDEX]])
    np.testing.assert_array_equal(flip(seg, None), seg)
    normal = np.array([[[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]]], dtype=np.float32)
    flipped = target_kind("normal").on_hflip(normal, lut)
    np.testing.assert_array_equal(flipped, normal * F32([-1, 1, 1]))  # exact: a sign flip
    assert normal[0, 0, 0] == np.float32(0.6)  # the input is left alone
    assert all(target_kind(k).on_hflip is None for k in ("image", "depth", "edge", "binary"))


def test_resampled_normals_are_made_unit_again():
    normal = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -2.0]]], dtype=np.float32)
    unit = target_kind("normal").on_resample(normal)
    np.testing.assert_allclose(unit, [[[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0]]])
    assert all(target_kind(k).on_resample is None for k in CASES if k != "normal")


def test_valid_entries_of_batch_targets():
    seg = torch.tensor([[0, IGNORE_INDEX, 3]])
    assert target_kind("seg").valid(seg).tolist() == [[True, False, True]]
    depth = torch.tensor([[[0.0, 1.5, -1.0]]])
    assert target_kind("depth").valid(depth).tolist() == [[[False, True, False]]]
    normal = torch.zeros(2, 3, 1, 2)
    normal[1, 2, 0, 1] = -1.0  # sample 1, pixel (0, 1): a valid normal
    valid = target_kind("normal").valid(normal)
    assert valid.tolist() == [[[False, False]], [[False, True]]]  # [N,C,H,W] -> [N,H,W]
    assert target_kind("normal").valid(normal[1]).tolist() == [[False, True]]  # [C,H,W] -> [H,W]
    assert all(target_kind(k).valid is None for k in ("image", "edge", "binary"))


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(
        ValueError, match=r"unknown target kind 'keypoints'; choose one of \['image'"
    ):
        target_kind("keypoints")
    with pytest.raises(ValueError, match="binary"):
        sample_kinds({"pose": TargetSpec("keypoints")})


def test_register_a_kind():
    kind = TargetKind("flow", "HWC", "CHW", "float32", resampling="nearest")
    try:
        assert register_target_kind(kind) is kind
        assert target_kind("flow") is kind and "flow" in list_target_kinds()
        with pytest.raises(ValueError, match="already registered"):
            register_target_kind(TargetKind("flow", "HW", "1HW", "float32", resampling=None))
    finally:
        TARGET_KINDS.unregister("flow")


@pytest.mark.parametrize(
    ("layouts", "resampling", "match"),
    [
        (("HWX", "XHW"), None, "array_layout"),
        (("HWC", "HW"), None, "batch_layout"),
        (("HW", "1HW"), "bilinear", "resampling"),
        (("", ""), "nearest", "resampled"),
    ],
)
def test_bad_kinds_raise(layouts, resampling, match):
    with pytest.raises(ValueError, match=match):
        TargetKind("bad", *layouts, "float32", resampling=resampling)
