"""`ManifestDataModule`: a dataset described by manifest.csv + targets.yaml, read like NYU-v2.

Genuine NYU-v2 frames as a manifest give NYUv2DataModule's batches and train with `lightning-mtl
fit`; a CelebA-like folder of labels only trains a step; every malformed manifest is named.
"""

from __future__ import annotations

import csv
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datamodules import ManifestDataModule, NYUv2DataModule
from datamodules.celebamask import write_synthetic_celebamask
from datamodules.celebamask.layout import ATTRIBUTE_FILE, ATTRIBUTES, parse_attributes
from datamodules.manifest import ManifestError, check_manifest
from lightning_mtl.cli.main import main
from lightning_mtl.targets import TargetSpec
from tests.helpers import (
    REAL_FRAMES,
    REAL_NYUV2,
    TINY_CLI,
    tiny_module,
    tiny_trainer,
    torch_threads,
    write_real_nyuv2_png,
)

#: the genuine frames' 13-class labels (0 = unlabelled), millimetre depth, edges from the labels
NYU_COLUMNS = {
    "seg": {"kind": "seg", "classes": 13, "ignore": 0, "first": 1},
    "depth": {"kind": "depth", "unit": "millimetres"},
    "edge": {"kind": "edge", "derived_from": "seg"},
}
NYU_SPLITS = {"train": range(6), "test": range(6, 10)}


def _write_manifest(root: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


@pytest.fixture(scope="module")
def nyu_roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The genuine frames in the NYU-v2 png layout, and the same files as a manifest folder
    (its own layout: rgb/, depth/, labels/; test rows listed before train rows)."""
    if not REAL_NYUV2.is_dir():
        pytest.skip(f"real NYU-v2 samples not found at {REAL_NYUV2}")
    base = tmp_path_factory.mktemp("nyu")
    png = write_real_nyuv2_png(base / "png", NYU_SPLITS)
    manifest = base / "manifest"
    rows = []
    for split in ("test", "train"):
        for i in NYU_SPLITS[split]:
            cells = []
            for source, folder in (("rgb", "rgb"), ("labels_13", "labels"), ("depth", "depth")):
                (manifest / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy(png / split / source / f"{REAL_FRAMES[i]}.png", manifest / folder)
                cells.append(f"{folder}/{REAL_FRAMES[i]}.png")
            rows.append([split, *cells])
    _write_manifest(manifest, ["split", "image", "seg", "depth"], rows)
    (manifest / "targets.yaml").write_text(yaml.safe_dump(NYU_COLUMNS, sort_keys=False))
    return png, manifest


def test_real_nyu_frames_give_the_batches_of_the_png_layout(nyu_roots: tuple[Path, Path]) -> None:
    png, manifest = nyu_roots
    options = {"image_size": (32, 40), "batch_size": 2, "val_fraction": 0.34, "augment": True}
    nyu = NYUv2DataModule(str(png), **options)
    ours = ManifestDataModule(str(manifest), **options)
    assert (
        ours.targets
        == nyu.targets
        == {
            "seg": TargetSpec("seg", num_classes=13),
            "depth": TargetSpec("depth"),
            "edge": TargetSpec("edge"),
        }
    )
    assert ours.tasks == nyu.tasks == ("seg", "depth", "edge")
    nyu.setup("fit")
    ours.setup("fit")
    assert {s: len(d) for s, d in ours.datasets.items()} == {"train": 4, "val": 2, "test": 4}
    for split in ("train", "val", "test"):
        loader = getattr(ours, f"{split}_dataloader")
        expected = list(getattr(nyu, f"{split}_dataloader")())
        got = list(loader())
        assert len(got) == len(expected) > 0
        for a, b in zip(got, expected, strict=True):
            assert a.keys() == b.keys() == {"image", "seg", "depth", "edge"}
            assert all(torch.equal(a[k], b[k]) for k in a), split
    assert check_manifest(manifest) == []


def test_real_nyu_manifest_trains_with_lightning_mtl_fit(
    nyu_roots: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, manifest = nyu_roots
    with torch_threads(1):
        main(
            [
                "fit",
                "--data", "datamodules.ManifestDataModule",
                "--data.root", str(manifest),
                "--data.val_fraction", "0.34",
                "--model.tasks", "[seg, depth, edge]",
                "--model.backbone", "resnet18",
                "--trainer.accelerator", "cpu",
                "--run.root", str(tmp_path),
                "--run.name", "manifest",
                "--run.logger", "csv",
                *TINY_CLI,
            ]
        )  # fmt: skip
    run = tmp_path / "manifest"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    with open(run / "metrics.csv") as f:
        keys = set(next(csv.reader(f)))
    assert {"train/seg/loss", "val/seg/miou", "val/depth/abs_err", "val/edge/loss"} <= keys
    assert "run summary" in capsys.readouterr().out


def test_celeba_like_labels_only_train_a_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Binary attributes (±1, as CelebA stores them) declared in `columns`, no targets.yaml;
    no val/test rows: both carved from train; an undeclared column is a note."""
    root = write_synthetic_celebamask(tmp_path / "faces", 10, image_size=32, seed=0)
    attributes, problems = parse_attributes(root / ATTRIBUTE_FILE)
    assert not problems
    column = {name: ATTRIBUTES.index(name.capitalize()) for name in ("male", "smiling")}
    rows = [
        ["train", f"CelebA-HQ-img/{i}.jpg", *(attributes[i][c] for c in column.values()), i]
        for i in sorted(attributes)
    ]
    _write_manifest(root, ["split", "image", *column, "id"], rows)
    columns = {name: {"kind": "binary", "negative": -1} for name in column}
    data = ManifestDataModule(
        str(root), columns=columns, image_size=(32, 32), batch_size=4, val_fraction=0.2,
        test_fraction=0.2,
    )  # fmt: skip
    assert data.targets == {"male": TargetSpec("binary"), "smiling": TargetSpec("binary")}
    assert data.tasks == ("male", "smiling")
    with pytest.warns(UserWarning, match=r"columns \['id'\] are not declared"):
        data.setup("fit")
    assert {s: len(d) for s, d in data.datasets.items()} == {"train": 6, "val": 2, "test": 2}
    for row, item in zip(data.datasets["test"].records, data.datasets["test"], strict=True):
        image_id = int(Path(row.cells["image"]).stem)
        for name, c in column.items():
            assert item[name].item() == float(attributes[image_id][c] > 0)
    assert item["image"].shape == (3, 32, 32)
    module = tiny_module(data, tasks=["male", "smiling"])
    with torch_threads(1):
        trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=1)
        trainer.fit(module, data)
    assert trainer.global_step == 1
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["data", "check", "--data", "manifest", "--root", str(root), "--columns", str(columns)]
        )
    out = capsys.readouterr().out.replace("\n", "")
    assert exit_info.value.code == 0 and "no problems found (manifest)" in out
    assert "note:" in out and "['id'] are not declared" in out


# -- a synthetic manifest root in every file type, and every way to break it ------------------

SIZE = (8, 12)
SPLITS = ("train", "train", "train", "train", "val", "test")  # row i of the table: line i + 2
COLUMNS = {
    "seg": {"kind": "seg", "classes": 5, "ignore": 0, "first": 1},
    "depth": {"kind": "depth", "unit": "mm"},
    "normal": {"kind": "normal", "encoding": "unit"},
    "edge": "edge",
    "flag": {"kind": "binary", "negative": -1},
}
#: the file type of each file column
FILES = {"image": "png", "seg": "png", "depth": "tif", "normal": "npy", "edge": "npz"}
HEADER = ["split", *FILES, "flag"]


def _save_image(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Six samples: image png, seg png, depth 16-bit tif (mm), normal npy, edge npz, flag ±1."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mine"
    for folder in FILES:
        (root / folder).mkdir(parents=True)
    rows = []
    for i, split in enumerate(SPLITS):
        files = {key: f"{key}/{i}.{ext}" for key, ext in FILES.items()}
        normal = rng.normal(size=(*SIZE, 3)).astype(np.float32)
        _save_image(root / files["image"], rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
        _save_image(root / files["seg"], rng.integers(0, 6, SIZE, dtype=np.uint8))
        _save_image(root / files["depth"], rng.integers(0, 9000, SIZE, dtype=np.uint16))
        np.save(root / files["normal"], normal / np.linalg.norm(normal, axis=-1, keepdims=True))
        np.savez(root / files["edge"], edge=rng.integers(0, 2, SIZE, dtype=np.uint8))
        rows.append([split, *files.values(), 1 if i % 2 else -1])
    _write_manifest(root, HEADER, rows)
    (root / "targets.yaml").write_text(yaml.safe_dump(COLUMNS, sort_keys=False))
    return root


def _datamodule(root: Path, **options) -> ManifestDataModule:
    return ManifestDataModule(str(root), **{"image_size": SIZE, "augment": False, **options})


def _items(data: ManifestDataModule) -> list[dict[str, torch.Tensor]]:
    data.setup("fit")
    return [item for split in ("train", "val", "test") for item in data.datasets[split]]


def test_every_file_type_is_decoded_by_its_column(root: Path) -> None:
    data = _datamodule(root)
    assert list(data.targets) == list(COLUMNS) and data.tasks == tuple(COLUMNS)
    items = _items(data)
    assert [r.line for r in data.datasets["val"].records] == [6]  # the table's own split
    pickle.dumps(data.datasets["train"])  # DataLoader workers may need to pickle it
    for i, item in enumerate(items):
        image = np.asarray(Image.open(root / "image" / f"{i}.png"))
        torch.testing.assert_close(item["image"], torch.from_numpy(image).permute(2, 0, 1) / 255)
        labels = np.asarray(Image.open(root / "seg" / f"{i}.png")).astype(np.int64)
        assert torch.equal(item["seg"], torch.from_numpy(np.where(labels == 0, 255, labels - 1)))
        depth = np.asarray(Image.open(root / "depth" / f"{i}.tif")).astype(np.float32)
        torch.testing.assert_close(item["depth"][0], torch.from_numpy(depth * np.float32(1e-3)))
        normal = np.load(root / "normal" / f"{i}.npy")
        torch.testing.assert_close(item["normal"], torch.from_numpy(normal).permute(2, 0, 1))
        edge = np.load(root / "edge" / f"{i}.npz")["edge"]
        assert torch.equal(item["edge"][0], torch.from_numpy(edge.astype(np.float32)))
        assert item["flag"].item() == i % 2
    data = _datamodule(root, tasks=["depth", "flag"], batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"image", "depth", "flag"} and batch["flag"].shape == (4,)
    assert check_manifest(root) == []


def test_columns_replace_targets_yaml_and_tasks_are_checked(root: Path) -> None:
    assert list(_datamodule(root, columns={"flag": "binary"}).targets) == ["flag"]
    (root / "targets.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "targets.yaml"))):
        _datamodule(root)
    data = _datamodule(root, columns={**COLUMNS, "flag": {"kind": "binary", "negative": -1}})
    assert data.targets["seg"] == TargetSpec("seg", num_classes=5)
    with pytest.raises(ValueError, match=r"cannot provide \['male'\]; available targets: \['seg'"):
        _datamodule(root, columns=COLUMNS, tasks=["male"])
    with pytest.raises(FileNotFoundError, match=r"manifest\.csv not found: a manifest root holds"):
        _datamodule(root.parent, columns=COLUMNS)


def _edit(root: Path, line: int, column: str, value: str) -> None:
    """Set one cell of manifest.csv (`line` as the file numbers it)."""
    with open(root / "manifest.csv", newline="") as f:
        table = list(csv.reader(f))
    table[line - 1][table[0].index(column)] = value
    _write_manifest(root, table[0], table[1:])


def _drop(root: Path, column: str) -> None:
    with open(root / "manifest.csv", newline="") as f:
        table = list(csv.reader(f))
    k = table[0].index(column)
    _write_manifest(root, table[0][:k] + table[0][k + 1 :], [r[:k] + r[k + 1 :] for r in table[1:]])


def _declare(root: Path, column: str, declaration: object) -> None:
    (root / "targets.yaml").write_text(
        yaml.safe_dump({**COLUMNS, column: declaration}, sort_keys=False)
    )


#: case → (corruption of the root, the file at fault (or None), message after "line N, column")
BAD_MANIFESTS: dict[str, tuple[Callable[[Path], object], str | None, str]] = {
    "missing column": (
        lambda r: _drop(r, "image"),
        None,
        r"line 1: no column image \(required\); its columns are \['split', 'seg'",
    ),
    "column declared but absent": (
        lambda r: _drop(r, "depth"),
        None,
        r"line 1: no column depth \(declared\)",
    ),
    "unknown split value": (
        lambda r: _edit(r, 3, "split", "training"),
        None,
        r"line 3, column 'split': 'training'; expected one of \['train', 'val', 'test'\]",
    ),
    "non-numeric label": (
        lambda r: _edit(r, 5, "flag", "yes"),
        None,
        r"line 5, column 'flag': 'yes' is not a number; expected the number 1 \(yes\) or -1",
    ),
    "label of neither value": (
        lambda r: _edit(r, 4, "flag", "0"),
        None,
        r"line 4, column 'flag': '0' is neither label value",
    ),
    "unsupported file type": (
        lambda r: _edit(r, 2, "depth", "depth/0.bmp"),
        None,
        r"line 2, column 'depth': 'depth/0.bmp' is not a .png/.jpg/.jpeg/.tif/.tiff/.npy/.npz",
    ),
    "missing file": (
        lambda r: (r / "depth" / "3.tif").unlink(),
        "depth/3.tif",
        r"line 5, column 'depth': .*: missing file; expected depth \[H,W\] in mm",
    ),
    "wrong shape": (
        lambda r: np.save(r / "normal" / "4.npy", np.zeros((*SIZE, 2), np.float32)),
        "normal/4.npy",
        r"line 6, column 'normal': .*: shape \(8, 12, 2\), expected \[H,W,3\] or \[3,H,W\]",
    ),
    "wrong size": (
        lambda r: np.savez(r / "edge" / "1.npz", np.zeros((SIZE[0], 5), np.uint8)),
        "edge/1.npz",
        r"line 3, column 'edge': .*: size \(8, 5\), expected the image's \(8, 12\)",
    ),
    "wrong dtype (8-bit depth)": (
        lambda r: _save_image(r / "depth" / "5.tif", np.ones(SIZE, np.uint8)),
        "depth/5.tif",
        r"line 7, column 'depth': .*: image mode L, expected one of \['I;16'",
    ),
    "wrong dtype (integer normals)": (
        lambda r: np.save(r / "normal" / "0.npy", np.ones((*SIZE, 3), np.uint8)),
        "normal/0.npy",
        r"line 2, column 'normal': .*: dtype uint8, expected floats \(encoding unit\)",
    ),
    "truncated file": (
        lambda r: (r / "image" / "2.png").write_bytes((r / "image" / "2.png").read_bytes()[:60]),
        "image/2.png",
        r"line 4, column 'image': .*; expected an 8-bit RGB image",
    ),
    "out-of-range class": (
        lambda r: _save_image(r / "seg" / "2.png", np.full(SIZE, 6, np.uint8)),
        "seg/2.png",
        r"line 4, column 'seg': .*: label 6 outside 0 \(ignore\) and 1..5",
    ),
    "unknown kind in targets.yaml": (
        lambda r: _declare(r, "seg", {"kind": "mask", "classes": 5}),
        "targets.yaml",
        r"column 'seg': unknown manifest column kind 'mask'; choose one of \['seg', 'depth'",
    ),
    "unknown option in targets.yaml": (
        lambda r: _declare(r, "seg", {"kind": "seg", "clases": 5}),
        "targets.yaml",
        r"column 'seg': unknown options \['clases'\]; a seg column takes \['classes'",
    ),
    "column named after another kind": (
        lambda r: _declare(r, "depth", {"kind": "seg", "classes": 5}),
        "targets.yaml",
        r"column 'depth': a column named after the target kind 'depth' must be of that kind, "
        r"not 'seg'",
    ),
    "edges derived from no seg column": (
        lambda r: _declare(r, "edge", {"kind": "edge", "derived_from": "labels"}),
        "targets.yaml",
        r"column 'edge': derived_from 'labels' is not a declared seg column",
    ),
    "row with a missing field": (
        lambda r: (r / "manifest.csv").write_text(
            (r / "manifest.csv").read_text() + "test,image/0.png\n"
        ),
        None,
        r"line 8: 2 fields, expected 7 \(the header's\)",
    ),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_bad_manifest_names_its_line_column_and_file(root: Path, case: str) -> None:
    corrupt, culprit, message = BAD_MANIFESTS[case]
    corrupt(root)
    source = "targets.yaml" if culprit == "targets.yaml" else "manifest.csv"
    pattern = re.escape(str(root / source)) + ".*" + message
    with pytest.raises(ManifestError) as info:
        _items(_datamodule(root))
    text = str(info.value)
    assert re.search(pattern, text), text
    if culprit and culprit != "targets.yaml":
        assert str(root / culprit) in text
    problems = check_manifest(root)
    assert len(problems) == 1 and re.search(pattern, problems[0]), problems


def test_check_reports_an_image_in_two_splits_and_data_check_exits_1(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(root, 7, "image", "image/0.png")
    problems = check_manifest(root)
    assert len(problems) == 1
    assert f"line 7, column 'image': {root / 'image' / '0.png'} is listed in both" in problems[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--data", "manifest", "--root", str(root)])
    assert exit_info.value.code == 1 and "1 problem(s)" in capsys.readouterr().out


def test_an_empty_carved_split_is_an_error(root: Path) -> None:
    table = root / "manifest.csv"
    table.write_text("".join(table.read_text().splitlines(keepends=True)[:-1]))  # no test row
    with pytest.raises(ManifestError, match=r"the test split is empty \(4 train rows"):
        _items(_datamodule(root))  # 10% of 4 rows: none
    assert len(_items(_datamodule(root, test_fraction=0.25))) == 5
