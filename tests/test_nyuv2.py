"""NYU-v2 from disk: writer → loader round trips, splits, targets, bad input, real NYU samples."""

from __future__ import annotations

import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.nyuv2 import (
    FORMATS,
    NYUv2DataError,
    NYUv2DataModule,
    check_nyuv2,
    label_edges,
    list_nyuv2_formats,
    register_nyuv2_format,
    resolve,
    synthetic_scene,
    write_synthetic_nyuv2,
)
from datamodules.nyuv2.formats import MTANFormat
from lightning_mtl.targets import TargetSpec
from tests.helpers import REAL_FRAMES, REAL_NYUV2, write_real_nyuv2_png

SIZE = (32, 48)
N_TRAIN, N_TEST, SEED = 10, 3, 3
KEYS = ("seg", "depth", "normal", "edge")
NUM_CLASSES = {"mtan": 13, "nyud_mt": 40, "png": 13}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("nyuv2")
    return {f: write_synthetic_nyuv2(base / f, f, N_TRAIN, N_TEST, SIZE, SEED) for f in FORMATS}


@pytest.fixture
def copy_root(roots: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of a format's root, to corrupt."""
    return lambda fmt: Path(shutil.copytree(roots[fmt], tmp_path / fmt))


def _datamodule(root: Path, **kwargs) -> NYUv2DataModule:
    options = {"augment": False, "image_size": SIZE, "batch_size": 4, "val_fraction": 0.2}
    dm = NYUv2DataModule(str(root), **{**options, **kwargs})
    dm.setup("fit")
    return dm


def _source(fmt: str, split: str, sample_id: str) -> dict[str, np.ndarray]:
    """The rendered scene a written sample came from (val samples are carved from train)."""
    index = int(sample_id)
    if fmt != "mtan" and split == "test":
        index -= N_TRAIN  # running ids across splits
    return synthetic_scene(SEED, "test" if split == "test" else "train", index, SIZE)


def _files(dm: NYUv2DataModule, split: str) -> set[Path]:
    return {s.files["image"] for s in dm.datasets[split].records}


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(roots: dict[str, Path], fmt: str) -> None:
    dm = _datamodule(roots[fmt])
    for split, dataset in dm.datasets.items():
        for sample in dataset.records:
            got = dm.layout.read(sample, KEYS)
            src = _source(fmt, split, sample.id)
            assert set(got) == {"image", *KEYS}
            np.testing.assert_array_equal(got["seg"], src["seg"])
            depth_tol, image_err = {"mtan": (0, 0), "nyud_mt": (0, 0.02), "png": (5e-4, 0.002)}[fmt]
            np.testing.assert_allclose(got["depth"], src["depth"], atol=depth_tol + 1e-6)
            assert ((got["depth"] == 0) == (src["depth"] == 0)).all()
            err = np.abs(got["image"] - src["image"])
            assert err.mean() <= image_err + 1e-6
            assert err.max() <= (0.15 if fmt == "nyud_mt" else 0.5 / 255 + 1e-6)
            np.testing.assert_allclose(
                got["normal"], src["normal"], atol=0.02 if fmt == "png" else 0
            )
            assert (got["normal"].any(-1) == src["normal"].any(-1)).all()
            edge = src["edge"] if fmt == "nyud_mt" else label_edges(src["seg"])
            np.testing.assert_array_equal(got["edge"], edge)


def test_label_edges_rule() -> None:
    seg = np.array([[0, 0, 1], [0, 255, 1], [2, 2, 1]])
    expected = [[0, 1, 1], [1, 0, 0], [1, 1, 1]]
    np.testing.assert_array_equal(label_edges(seg), expected)
    np.testing.assert_array_equal(label_edges(seg[:, ::-1]), np.fliplr(expected))


@pytest.mark.parametrize("fmt", FORMATS)
def test_detection_targets_and_batches(roots: dict[str, Path], fmt: str) -> None:
    assert resolve(roots[fmt]).format.name == fmt
    dm = NYUv2DataModule(str(roots[fmt]), augment=True, image_size=(24, 40), batch_size=4)
    assert dm.targets == {
        "seg": TargetSpec("seg", num_classes=NUM_CLASSES[fmt]),
        "depth": TargetSpec("depth"),
        "normal": TargetSpec("normal"),
        "edge": TargetSpec("edge"),
    }
    dm.setup("fit")
    pickle.dumps(dm.datasets["train"])  # DataLoader workers may need to pickle it
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        n = batch["image"].shape[0]
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
        assert shapes == {
            "image": ((n, 3, 24, 40), torch.float32),
            "seg": ((n, 24, 40), torch.int64),
            "depth": ((n, 1, 24, 40), torch.float32),
            "normal": ((n, 3, 24, 40), torch.float32),
            "edge": ((n, 1, 24, 40), torch.float32),
        }
        seg = batch["seg"]
        assert ((seg < NUM_CLASSES[fmt]) | (seg == 255)).all() and (seg >= 0).all()


def test_requested_tasks_only(roots: dict[str, Path]) -> None:
    batch = next(iter(_datamodule(roots["png"], tasks=["edge"]).val_dataloader()))
    assert set(batch) == {"image", "edge"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_splits_disjoint_and_seeded(roots: dict[str, Path], fmt: str) -> None:
    dm = _datamodule(roots[fmt])
    sizes = {split: len(d) for split, d in dm.datasets.items()}
    assert sizes == {"train": 8, "val": 2, "test": N_TEST}
    train, val, test = (_files(dm, s) for s in ("train", "val", "test"))
    assert not val & test and not val & train and not train & test
    assert _files(_datamodule(roots[fmt]), "val") == val
    assert any(_files(_datamodule(roots[fmt], seed=s), "val") != val for s in (1, 2, 5))


def test_nyud_mt_uses_its_own_val_list(copy_root: Callable[[str], Path]) -> None:
    root = copy_root("nyud_mt")
    ids = (root / "gt_sets" / "train.txt").read_text().split()
    (root / "gt_sets" / "train.txt").write_text("\n".join(ids[3:]))
    (root / "gt_sets" / "val.txt").write_text("\n".join(ids[:3]))
    dm = _datamodule(root)
    assert [s.id for s in dm.datasets["val"].records] == ids[:3]
    assert len(dm.datasets["train"]) == N_TRAIN - 3


def test_nyud_mt_without_a_test_list_is_evaluated_on_val(
    copy_root: Callable[[str], Path],
) -> None:
    """Vandenhende's and ASTMT's NYUD-MT copies list only gt_sets/{train,val}.txt."""
    root = copy_root("nyud_mt")
    sets = root / "gt_sets"
    (sets / "test.txt").rename(sets / "val.txt")
    val_ids = (sets / "val.txt").read_text().split()
    assert resolve(root).format.name == "nyud_mt"
    with pytest.warns(UserWarning, match="the test split is the val split") as warned:
        dm = _datamodule(root)
    notes = [str(w.message) for w in warned if "test split is the val split" in str(w.message)]
    assert len(notes) == 1 and str(root) in notes[0] and str(sets / "test.txt") in notes[0]
    assert [s.id for s in dm.datasets["val"].records] == val_ids
    assert [s.id for s in dm.datasets["test"].records] == val_ids
    assert len(dm.datasets["train"]) == N_TRAIN
    assert len(next(iter(dm.test_dataloader()))["image"]) == min(4, N_TEST)
    assert check_nyuv2(root) == [] and resolve(root).notes == notes
    (sets / "val.txt").unlink()  # a train list alone is no NYUD-MT root
    with pytest.raises(NYUv2DataError, match="matches no NYU-v2 layout"):
        NYUv2DataModule(str(root))


def test_nyud_mt_with_a_test_list_has_no_note(roots: dict[str, Path]) -> None:
    assert resolve(roots["nyud_mt"]).notes == []


def test_depth_per_image_max_normalisation(tmp_path: Path) -> None:
    """Each image's depth / its largest depth, in every split; 0 stays invalid; off by default."""
    root = write_synthetic_nyuv2(tmp_path / "nyu", "mtan", 4, 2, (2, 3), 0)
    base = np.array([[0.0, 0.5, 1.0], [2.0, 4.0, 0.0]], dtype=np.float32)
    files = sorted(root.glob("*/depth/*.npy"))
    for k, path in enumerate(files):
        np.save(path, (base * (k + 1))[..., None])  # image k: max depth 4·(k+1) m
    expected = torch.tensor([[[0.0, 0.125, 0.25], [0.5, 1.0, 0.0]]])
    options = {"tasks": ["depth"], "image_size": (2, 3), "val_fraction": 0.25}
    dm = _datamodule(root, depth_normalisation="per_image_max", **options)
    assert dm.hparams["depth_normalisation"] == "per_image_max"
    seen = 0
    for split in ("train", "val", "test"):
        for item in dm.datasets[split]:
            torch.testing.assert_close(item["depth"], expected, rtol=0, atol=0)
            seen += 1
    assert seen == len(files) == 6
    augmented = _datamodule(root, depth_normalisation="per_image_max", augment=True, **options)
    for item in augmented.datasets["train"]:
        assert item["depth"].max() <= 1 and (item["depth"] > 0).any()
    metres = _datamodule(root, **options).datasets["test"]
    for record, item in zip(metres.records, metres, strict=True):
        k = files.index(record.files["depth"])
        torch.testing.assert_close(item["depth"], torch.from_numpy(base * (k + 1))[None])
    with pytest.raises(ValueError, match=r"depth_normalisation must be one of \['none'"):
        NYUv2DataModule(str(root), depth_normalisation="global_max")  # type: ignore[arg-type]


def test_class_count_choice(copy_root: Callable[[str], Path]) -> None:
    root = copy_root("png")
    assert NYUv2DataModule(str(root), num_classes=40).targets["seg"].num_classes == 40
    shutil.rmtree(root / "train" / "labels_40")
    with pytest.raises(NYUv2DataError, match="no 40-class labels"):
        NYUv2DataModule(str(root), num_classes=40)
    with pytest.raises(ValueError, match=r"stores \[13\] classes"):
        NYUv2DataModule(str(copy_root("mtan")), num_classes=40)


def test_targets_follow_the_root_and_unknown_tasks(copy_root: Callable[[str], Path]) -> None:
    root = copy_root("mtan")
    shutil.rmtree(root / "train" / "normal")
    dm = NYUv2DataModule(str(root), tasks=["seg", "edge"])
    assert list(dm.targets) == ["seg", "depth", "edge"]
    for task in ("normal", "sphere"):
        with pytest.raises(ValueError, match=r"available targets: \['seg', 'depth', 'edge'\]"):
            NYUv2DataModule(str(root), tasks=[task])


def test_missing_and_unrecognised_roots(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot be downloaded") as info:
        NYUv2DataModule(str(tmp_path / "nope"))
    assert all(f"{f}:" in str(info.value) for f in FORMATS) and "synthesize" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NYUv2DataError, match="matches no NYU-v2 layout") as info:
        NYUv2DataModule(str(tmp_path / "empty"))
    assert all(f"{f}:" in str(info.value) for f in FORMATS)
    problems = check_nyuv2(tmp_path / "empty")
    assert len(problems) == 1 and "matches no NYU-v2 layout" in problems[0]
    with pytest.raises(ValueError, match=r"unknown NYU-v2 format 'h5'; choose one of \['mtan'"):
        NYUv2DataModule(str(tmp_path / "empty"), format="h5")
    assert list_nyuv2_formats() == list(FORMATS) == ["mtan", "nyud_mt", "png"]


def test_a_registered_format_is_chosen_by_name(roots: dict[str, Path]) -> None:
    class Renamed(MTANFormat):
        name = "mtan_copy"

    try:
        assert register_nyuv2_format(Renamed) is Renamed
        assert list_nyuv2_formats()[-1] == "mtan_copy"
        assert resolve(roots["mtan"], "mtan_copy").format.name == "mtan_copy"
        with pytest.raises(ValueError, match="already registered"):
            register_nyuv2_format(Renamed)  # a second instance under a taken name
    finally:
        FORMATS.unregister("mtan_copy")


def test_synthesize_in_prepare_data(tmp_path: Path) -> None:
    root = tmp_path / "nyu"
    dm = NYUv2DataModule(str(root), synthesize=8, image_size=SIZE, augment=False, tasks=["depth"])
    assert dm.targets["seg"].num_classes == 13 and "normal" in dm.targets  # before any file
    dm.prepare_data()
    assert resolve(root).format.name == "mtan" and check_nyuv2(root) == []
    dm.prepare_data()  # root exists: nothing rewritten
    dm.setup("fit")
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 7, "val": 1, "test": 2}
    assert next(iter(dm.train_dataloader()))["depth"].shape == (7, 1, *SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["nyu"]  # no partial folder left


def _save_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, array.astype(np.float32))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_png(path: Path, value: int) -> None:
    a = np.array(Image.open(path))
    a[0, 0] = value
    Image.fromarray(a).save(path)


#: (format, split, sample id, key's relative file, corruption, expected message fragment)
BAD_INPUTS = {
    "missing npy": ("mtan", "train", "3", "train/depth/3.npy", Path.unlink, "missing file"),
    "missing png": ("png", "test", "0011", "test/labels_13/0011.png", Path.unlink, "missing"),
    "truncated npy": ("mtan", "test", "1", "val/image/1.npy", _truncate, "float"),
    "truncated png": ("png", "train", "0002", "train/depth/0002.png", _truncate, "16-bit"),
    "truncated jpg": ("nyud_mt", "train", "0004", "images/0004.jpg", _truncate, "RGB jpg"),
    "wrong shape": (
        "mtan",
        "train",
        "5",
        "train/normal/5.npy",
        lambda p: _save_npy(p, np.zeros((*SIZE, 2))),
        r"shape \(32, 48, 2\)",
    ),
    "wrong size": (
        "nyud_mt",
        "train",
        "0001",
        "depth/0001.npy",
        lambda p: _save_npy(p, np.ones((SIZE[0], SIZE[1] - 1))),
        "expected the image's",
    ),
    "label out of range": (
        "mtan",
        "train",
        "0",
        "train/label/0.npy",
        lambda p: _save_npy(p, np.full(SIZE, 13)),
        r"label 13 outside -1 \(ignore\) and 0..12",
    ),
    "png label out of range": (
        "png",
        "train",
        "0006",
        "train/labels_13/0006.png",
        lambda p: _set_png(p, 14),
        "label 14 outside",
    ),
    "nan depth": (
        "mtan",
        "test",
        "2",
        "val/depth/2.npy",
        lambda p: _save_npy(p, np.where(np.arange(SIZE[1]) == 7, np.nan, 1.0) * np.ones(SIZE)),
        "NaN or inf",
    ),
    "inf depth": (
        "nyud_mt",
        "test",
        "0012",
        "depth/0012.npy",
        lambda p: _save_npy(p, np.full(SIZE, np.inf)),
        "NaN or inf",
    ),
    "edge not binary": (
        "nyud_mt",
        "train",
        "0007",
        "edge/0007.npy",
        lambda p: _save_npy(p, np.full(SIZE, 0.5)),
        "other than 0 and 1",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_the_file(copy_root: Callable[[str], Path], case: str) -> None:
    fmt, split, sample_id, relative, corrupt, message = BAD_INPUTS[case]
    root = copy_root(fmt)
    path = root / relative
    corrupt(path)
    layout = resolve(root)
    sample = next(s for s in layout.samples()[split] if s.id == sample_id)
    with pytest.raises(NYUv2DataError, match=re.escape(str(path)) + ".*" + message):
        layout.read(sample, KEYS)
    problems = check_nyuv2(root)
    assert len(problems) == 1 and str(path) in problems[0], problems


def test_bad_sample_raises_when_read_through_the_loader(copy_root: Callable[[str], Path]) -> None:
    root = copy_root("png")
    _truncate(root / "test" / "rgb" / "0010.png")
    dm = _datamodule(root)  # construction and setup read no sample
    with pytest.raises(NYUv2DataError, match=re.escape(str(root / "test" / "rgb" / "0010.png"))):
        next(iter(dm.test_dataloader()))


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 10 real test frames in the png layout; the first two copied as train too."""
    if not REAL_NYUV2.is_dir():
        pytest.skip(f"real NYU-v2 samples not found at {REAL_NYUV2}")
    root = tmp_path_factory.mktemp("nyuv2_real")
    return write_real_nyuv2_png(root, {"test": range(10), "train": range(2)})


def test_real_samples(real_root: Path) -> None:
    dm = _datamodule(real_root, image_size=(480, 640), val_fraction=0.5)
    assert dm.targets == {
        "seg": TargetSpec("seg", num_classes=13),
        "depth": TargetSpec("depth"),
        "edge": TargetSpec("edge"),
    }
    assert check_nyuv2(real_root) == []
    dataset = dm.datasets["test"]
    assert [s.id for s in dataset.records] == list(REAL_FRAMES)
    depths = []
    for sample, batch in zip(dataset.records, dataset, strict=True):
        files = {k: np.array(Image.open(p)) for k, p in sample.files.items()}
        assert batch["image"].shape == (3, 480, 640) and batch["image"].dtype == torch.float32
        np.testing.assert_allclose(batch["image"].permute(1, 2, 0), files["image"] / 255, atol=1e-6)
        seg, label = batch["seg"].numpy(), files["seg"]
        assert seg.shape == (480, 640) and set(np.unique(seg)) <= {*range(13), 255}
        np.testing.assert_array_equal(seg == 255, label == 0)
        np.testing.assert_array_equal(seg[label > 0], label[label > 0].astype(np.int64) - 1)
        depth, millimetres = batch["depth"][0].numpy(), files["depth"]
        np.testing.assert_allclose(depth, millimetres / 1000, rtol=1e-6)
        np.testing.assert_array_equal(depth == 0, millimetres == 0)
        depths.append(depth)
    assert 0.85 < np.min(depths) < 0.95 and 9.9 < np.max(depths) < 10.0


def test_check_reports_samples_in_two_splits(copy_root: Callable[[str], Path]) -> None:
    root = copy_root("nyud_mt")
    with (root / "gt_sets" / "test.txt").open("a") as f:
        f.write("0000\n")
    problems = check_nyuv2(root)
    assert len(problems) == 1 and "0000.jpg: listed in both 'train' and 'test'" in problems[0]
