"""The synthetic datamodule: determinism, batch format, geometric consistency, arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import SyntheticDataModule
from datamodules.synthetic import BINARY_LABELS, CLASS_NAMES, render_sample
from datamodules.synthetic.scene import HFOV_DEG
from lightning_mtl.targets import IGNORE_INDEX, TargetSpec

SIZE = (48, 64)


def _datamodule(**kwargs) -> SyntheticDataModule:
    dm = SyntheticDataModule(**{"num_train": 8, "num_val": 6, "num_test": 4, **kwargs})
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def samples() -> list[dict[str, torch.Tensor]]:
    ds = _datamodule(image_size=SIZE, num_train=24).datasets["train"]
    return [ds[i] for i in range(len(ds))]


def _neighbourhood_all(mask: np.ndarray) -> np.ndarray:
    """Interior pixels whose whole 3×3 neighbourhood satisfies `mask` (shape shrinks by 2)."""
    h, w = mask.shape
    out = np.ones((h - 2, w - 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out &= mask[dy : dy + h - 2, dx : dx + w - 2]
    return out


def test_targets_before_setup() -> None:
    dm = SyntheticDataModule(tasks=["depth"])
    assert dm.targets["seg"] == TargetSpec("seg", num_classes=len(CLASS_NAMES))
    for key in ("depth", "normal", "edge"):
        assert dm.targets[key] == TargetSpec(key)
    for key in BINARY_LABELS:
        assert dm.targets[key] == TargetSpec("binary")


def test_deterministic_per_seed() -> None:
    a = _datamodule(seed=3).datasets["val"]
    b = _datamodule(seed=3).datasets["val"]
    c = _datamodule(seed=4).datasets["val"]
    order = [2, 0, 5]
    first = {i: a[i] for i in order}
    second = {i: b[i] for i in reversed(order)}  # access order does not matter
    for i in order:
        assert all(torch.equal(first[i][k], second[i][k]) for k in first[i])
    assert not torch.equal(a[0]["image"], c[0]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], _datamodule(seed=3).datasets["test"][0]["image"])


def test_worker_count_does_not_change_samples() -> None:
    serial = next(iter(_datamodule(batch_size=6).val_dataloader()))
    parallel = next(iter(_datamodule(batch_size=6, num_workers=2).val_dataloader()))
    assert all(torch.equal(serial[k], parallel[k]) for k in serial)


def test_shapes_dtypes_ranges(samples: list[dict[str, torch.Tensor]]) -> None:
    h, w = SIZE
    for s in samples:
        assert set(s) == {"image", "seg", "depth", "normal", "edge", *BINARY_LABELS}
        assert s["image"].shape == (3, h, w)
        assert s["image"].dtype == torch.float32
        assert s["image"].min() >= 0
        assert s["image"].max() <= 1
        assert s["seg"].shape == (h, w)
        assert s["seg"].dtype == torch.int64
        seg = s["seg"]
        assert ((seg >= 0) & (seg < len(CLASS_NAMES)) | (seg == IGNORE_INDEX)).all()
        assert s["depth"].shape == (1, h, w)
        assert s["depth"].dtype == torch.float32
        assert s["normal"].shape == (3, h, w)
        assert s["normal"].dtype == torch.float32
        assert s["edge"].shape == (1, h, w)
        assert s["edge"].dtype == torch.float32
        assert set(s["edge"].unique().tolist()) <= {0.0, 1.0}
        for key in BINARY_LABELS:
            assert s[key].shape == ()
            assert s[key].dtype == torch.float32
            assert s[key].item() in (0.0, 1.0)


def test_validity_of_depth_and_normals(samples: list[dict[str, torch.Tensor]]) -> None:
    invalid = unlabeled = 0
    for s in samples:
        depth, normal = s["depth"][0], s["normal"]
        valid = depth > 0
        assert torch.isfinite(depth).all()
        assert (depth[valid] < 20).all()
        norm = normal.norm(dim=0)
        assert torch.allclose(norm[valid], torch.ones(()), atol=1e-5)
        assert (normal[:, ~valid] == 0).all()
        invalid += (~valid).sum().item()
        unlabeled += (s["seg"] == IGNORE_INDEX).sum().item()
    total = len(samples) * SIZE[0] * SIZE[1]
    assert 0 < invalid < 0.1 * total
    assert 0 < unlabeled < 0.1 * total


def test_normals_face_camera_and_floor_points_up(samples: list[dict[str, torch.Tensor]]) -> None:
    h, w = SIZE
    focal = w / 2 / np.tan(np.deg2rad(HFOV_DEG) / 2)
    v, u = np.mgrid[:h, :w] + 0.5
    rays = np.stack([(u - w / 2) / focal, (v - h / 2) / focal, np.ones((h, w))])
    floor = CLASS_NAMES.index("floor")
    for s in samples:
        normal, valid = s["normal"].numpy(), s["depth"][0].numpy() > 0
        assert ((normal * rays).sum(0)[valid] < 0).all()
        on_floor = valid & (s["seg"].numpy() == floor)
        assert (normal[1][on_floor] < -0.5).all()  # camera y points down


def test_normals_agree_with_depth(samples: list[dict[str, torch.Tensor]]) -> None:
    """Finite-difference normals of the back-projected depth match the rendered normals."""
    h, w = SIZE
    focal = w / 2 / np.tan(np.deg2rad(HFOV_DEG) / 2)
    v, u = np.mgrid[:h, :w] + 0.5
    planar_err, curved_err = [], []
    for s in samples:
        depth, normal = s["depth"][0].numpy().astype(np.float64), s["normal"].numpy()
        points = depth * np.stack([(u - w / 2) / focal, (v - h / 2) / focal, np.ones((h, w))])
        du = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
        dv = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
        fd = np.cross(du, dv, axis=0)
        fd /= np.linalg.norm(fd, axis=0, keepdims=True) + 1e-12
        fd *= -np.sign((fd * points[:, 1:-1, 1:-1]).sum(0, keepdims=True))
        centre = normal[:, 1:-1, 1:-1]
        err = np.degrees(np.arccos(np.clip((fd * centre).sum(0), -1, 1)))
        smooth = _neighbourhood_all((depth > 0) & (s["edge"][0].numpy() == 0))
        flat = np.ones_like(smooth)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            flat &= (normal[:, dy : dy + h - 2, dx : dx + w - 2] == centre).all(0)
        planar_err.append(err[smooth & flat])
        curved_err.append(err[smooth & ~flat])
    planar, curved = np.concatenate(planar_err), np.concatenate(curved_err)
    assert planar.size > 0.5 * len(samples) * h * w
    assert np.mean(planar < 1.0) > 0.99
    assert np.median(curved) < 10.0


def test_edges_lie_on_label_boundaries(samples: list[dict[str, torch.Tensor]]) -> None:
    for s in samples:
        edge, seg = s["edge"][0].bool(), s["seg"]
        labelled = seg != IGNORE_INDEX
        for a, b in (
            (np.s_[1:, :], np.s_[:-1, :]),
            (np.s_[:, 1:], np.s_[:, :-1]),
        ):
            change = (seg[a] != seg[b]) & labelled[a] & labelled[b]
            assert edge[a][change].all()
            assert edge[b][change].all()
        assert 0 < edge.float().mean() < 0.3


def test_binary_labels_are_balanced() -> None:
    counts = dict.fromkeys(BINARY_LABELS, 0.0)
    n = 200
    for i in range(n):
        sample = render_sample(0, 0, i, (32, 32))
        for key in counts:
            counts[key] += float(sample[key])
    for key, count in counts.items():
        assert 0.25 < count / n < 0.75, key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": ["seg", "colour"]}, r"colour.*available targets: \['seg'"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"image_size": (0, 64)}, "image_size"),
        ({"image_size": (64,)}, "image_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticDataModule(**kwargs)


def test_dataloaders_collate_requested_tasks() -> None:
    dm = _datamodule(tasks=["seg", "normal", "sphere"], batch_size=3, image_size=(16, 24))
    train = dm.train_dataloader()
    assert len(train) == 8 // 3  # drop_last
    batch = next(iter(train))
    assert set(batch) == {"image", "seg", "normal", "sphere"}
    assert batch["image"].shape == (3, 3, 16, 24)
    assert batch["seg"].shape == (3, 16, 24)
    assert batch["normal"].shape == (3, 3, 16, 24)
    assert batch["sphere"].shape == (3,)
    assert batch["sphere"].dtype == torch.float32
    assert [len(dm.val_dataloader()), len(dm.test_dataloader())] == [2, 2]
    assert len(dm.predict_dataloader().dataset) == 4
    full = next(iter(_datamodule(batch_size=2).test_dataloader()))
    assert full["depth"].shape == (2, 1, 64, 64)
    assert full["edge"].shape == (2, 1, 64, 64)
