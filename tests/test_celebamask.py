"""CelebAMask-HQ: synthetic writer → loader round trip, class maps and flips, splits, bad input."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.celebamask import (
    ATTRIBUTES,
    CLASS_MAPS,
    PARTS,
    CelebAMaskHQDataModule,
    check_celebamask,
    flip_label_map,
    write_synthetic_celebamask,
)
from datamodules.celebamask import writer as celebamask_writer
from datamodules.celebamask.layout import (
    ATTRIBUTE_FILE,
    MAPPING_FILE,
    image_path,
    mask_path,
    parse_attributes,
)
from datamodules.synthetic_root import partial_path, write_root_once
from datamodules.transforms import JointTransform
from lightning_mtl.targets import TargetSpec
from tests.helpers import tiny_module, tiny_trainer

SIDE = 32  # image side; masks are SIDE // 2, like 1024 / 512
MASK = SIDE // 2
N = 10


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_celebamask(tmp_path_factory.mktemp("celebamask"), N, SIDE, seed=0)


@pytest.fixture
def copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "root"))


def _datamodule(root: Path, **kwargs) -> CelebAMaskHQDataModule:
    options = {"image_size": (MASK, MASK), "augment": False, "batch_size": 4}
    dm = CelebAMaskHQDataModule(str(root), **{**options, **kwargs})
    dm.setup("fit")
    return dm


def _samples(dm: CelebAMaskHQDataModule) -> dict[int, dict[str, torch.Tensor]]:
    """Every sample of every split, by id."""
    return {
        image_id: ds[k] for ds in dm.datasets.values() for k, (image_id, _) in enumerate(ds.records)
    }


def _split_ids(dm: CelebAMaskHQDataModule) -> dict[str, list[int]]:
    return {name: [i for i, _ in ds.records] for name, ds in dm.datasets.items()}


def _parsing(root: Path, image_id: int) -> np.ndarray:
    """The 19-class parsing painted straight from the written pngs."""
    out = np.zeros((MASK, MASK), dtype=np.int64)
    for label, part in enumerate(PARTS, start=1):
        path = mask_path(root, image_id, part)
        if path.exists():
            out[np.asarray(Image.open(path)) > 0] = label
    return out


def _attribute_rows(root: Path) -> dict[int, dict[str, int]]:
    lines = (root / ATTRIBUTE_FILE).read_text().splitlines()[2:]
    rows = [line.split() for line in lines]
    return {int(r[0][:-4]): dict(zip(ATTRIBUTES, map(int, r[1:]), strict=True)) for r in rows}


def test_writer_is_deterministic(root: Path, tmp_path: Path) -> None:
    again = write_synthetic_celebamask(tmp_path / "again", N, SIDE, seed=0)
    other = write_synthetic_celebamask(tmp_path / "other", N, SIDE, seed=1)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert image_path(root, 0).read_bytes() != image_path(other, 0).read_bytes()
    assert check_celebamask(root) == []


def test_drawing_agrees_with_attributes(root: Path) -> None:
    drawn = {"Eyeglasses": "eye_g", "Wearing_Hat": "hat", "Wearing_Earrings": "ear_r"}
    for image_id, row in _attribute_rows(root).items():
        for attribute, part in drawn.items():
            assert mask_path(root, image_id, part).exists() == (row[attribute] == 1)
        assert mask_path(root, image_id, "hair").exists() == (row["Bald"] == -1)
        assert row["No_Beard"] == 1 or row["Male"] == 1
        with (
            Image.open(image_path(root, image_id)) as im,
            Image.open(mask_path(root, image_id, "skin")) as mask,
        ):
            assert im.size == (SIDE, SIDE) and mask.size == (MASK, MASK)


@pytest.mark.parametrize("parts", ["19", "3"])
def test_round_trip_seg(root: Path, parts: str) -> None:
    samples = _samples(_datamodule(root, parts=parts, tasks=["seg"]))
    assert sorted(samples) == list(range(N))
    lut = np.array([0] + [CLASS_MAPS[parts].get(p, 0) for p in PARTS])
    for image_id, sample in samples.items():
        expected = lut[_parsing(root, image_id)]
        np.testing.assert_array_equal(sample["seg"].numpy(), expected)
        with Image.open(image_path(root, image_id)) as im:
            reference = np.asarray(im.convert("RGB").resize((MASK, MASK), Image.BILINEAR)) / 255
        image = sample["image"].numpy().transpose(1, 2, 0)
        assert np.abs(image - reference).mean() < 0.05
    if parts == "3":  # hair = 2, face parts = 1, neck / cloth = background
        labels = np.stack([_parsing(root, i) for i in range(N)])
        seg = np.stack([samples[i]["seg"].numpy() for i in range(N)])
        assert (seg[labels == PARTS.index("hair") + 1] == 2).all()
        for part in ("skin", "nose", "l_eye", "r_brow", "u_lip"):
            assert (seg[labels == PARTS.index(part) + 1] == 1).all()
        for part in ("neck", "cloth"):
            assert (seg[labels == PARTS.index(part) + 1] == 0).all()
        assert {0, 1, 2} <= set(np.unique(seg))


def test_round_trip_attributes(root: Path) -> None:
    tasks = [a.lower() for a in ATTRIBUTES] + ["smile"]
    samples = _samples(_datamodule(root, tasks=tasks))
    for image_id, row in _attribute_rows(root).items():
        sample = samples[image_id]
        for attribute, value in row.items():
            assert sample[attribute.lower()].shape == ()
            assert sample[attribute.lower()].dtype == torch.float32
            assert sample[attribute.lower()].item() == (1.0 if value == 1 else 0.0)
        assert sample["smile"].item() == sample["smiling"].item()


def test_attribute_lines_tolerate_whitespace(root: Path, tmp_path: Path) -> None:
    text = (root / ATTRIBUTE_FILE).read_text()
    assert any("  " in line for line in text.splitlines()[2:])  # CelebA's alignment
    path = tmp_path / ATTRIBUTE_FILE
    path.write_text(re.sub(r" (-?1)", r"\t  \1", text).replace("\n", "  \n"))
    rows, problems = parse_attributes(path)
    expected, _ = parse_attributes(root / ATTRIBUTE_FILE)
    assert problems == []
    assert rows.keys() == expected.keys()
    assert all((rows[i] == expected[i]).all() for i in rows)


def test_flip_map_swaps_exactly_left_right_parts() -> None:
    flip = flip_label_map(CLASS_MAPS["19"])
    names = ("background", *PARTS)
    swapped = {(names[c], names[f]) for c, f in enumerate(flip) if c != f}
    sides = [("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")]
    assert swapped == {*sides, *((r, left) for left, r in sides)}
    assert flip_label_map(CLASS_MAPS["3"]) == (0, 1, 2)
    assert flip_label_map({"l_eye": 1, "r_eye": 2}) == (0, 2, 1)
    with pytest.raises(ValueError, match="cannot be flipped"):
        flip_label_map({"skin": 1, "l_eye": 1, "r_eye": 2})


def test_flipped_sample_has_mirrored_labels(root: Path) -> None:
    dm = _datamodule(root, parts="19", tasks=["seg"], augment=True)
    assert list(dm.datasets["train"].transform.flip_lut[:19]) == list(dm.flip_label_map)
    ds = dm.datasets["train"]
    arrays = ds.reader(ds.records[0])
    flip = np.array(dm.flip_label_map)
    transform = JointTransform(
        (MASK, MASK), train=True, scale_range=(1.0, 1.0), color_jitter=False,
        flip_label_map=dm.flip_label_map, seed=0,
    )  # fmt: skip
    outcomes = set()
    for _ in range(16):
        out = transform(dict(arrays))
        flipped = not np.array_equal(out["image"], arrays["image"])
        if flipped:
            np.testing.assert_array_equal(out["image"], arrays["image"][:, ::-1])
            np.testing.assert_array_equal(out["seg"], flip[arrays["seg"][:, ::-1]])
        else:
            np.testing.assert_array_equal(out["seg"], arrays["seg"])
        outcomes.add(flipped)
    assert outcomes == {True, False}
    assert (arrays["seg"] == PARTS.index("l_eye") + 1).any()


def test_random_split(root: Path) -> None:
    ids = _split_ids(_datamodule(root, tasks=["male"]))
    assert [len(ids[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(i for split in ids.values() for i in split) == list(range(N))
    assert _split_ids(_datamodule(root, tasks=["male"])) == ids
    assert _split_ids(_datamodule(root, tasks=["male"], seed=1)) != ids


def test_official_split(root: Path, copy: Path) -> None:
    ids = _split_ids(_datamodule(root, tasks=["male"], split="official"))
    # the writer maps id % 5 == 3 to CelebA's val images, id % 5 == 4 to its test images
    assert ids == {"train": [0, 1, 2, 5, 6, 7], "val": [3, 8], "test": [4, 9]}
    (copy / MAPPING_FILE).unlink()
    _datamodule(copy, tasks=["male"])  # the random split does not need it
    with pytest.raises(FileNotFoundError, match=re.escape(str(copy / MAPPING_FILE))):
        _datamodule(copy, tasks=["male"], split="official")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_attributes(root: Path, edit: Callable[[list[str]], None]) -> None:
    lines = (root / ATTRIBUTE_FILE).read_text().splitlines()
    edit(lines)
    (root / ATTRIBUTE_FILE).write_text("\n".join(lines) + "\n")


def _drop_row(lines: list[str]) -> None:
    lines[0] = str(N - 1)
    del lines[2 + 3]


def _bad_value(lines: list[str]) -> None:
    lines[2 + 3] = lines[2 + 3].replace("-1", "0", 1)


def _bad_header(lines: list[str]) -> None:
    lines[1] = " ".join(ATTRIBUTES[:-1])


BAD_INPUTS = {
    # name: (mutation, file (relative), where the error appears, message pattern)
    "missing image": (lambda r: image_path(r, 3).unlink(), "CelebA-HQ-img/3.jpg", "setup", ""),
    "truncated image": (lambda r: _truncate(image_path(r, 3)), "CelebA-HQ-img/3.jpg", "read", ""),
    "truncated mask": (
        lambda r: _truncate(mask_path(r, 3, "skin")),
        "CelebAMask-HQ-mask-anno/0/00003_skin.png",
        "read",
        "truncated",
    ),
    "mask size": (
        lambda r: Image.new("L", (MASK - 3, MASK)).save(mask_path(r, 3, "nose")),
        "CelebAMask-HQ-mask-anno/0/00003_nose.png",
        "read",
        f"expected {MASK}×{MASK}",
    ),
    "no attribute row": (
        lambda r: _edit_attributes(r, _drop_row),
        "CelebA-HQ-img/3.jpg",
        "setup",
        f"no row in .*{ATTRIBUTE_FILE}",
    ),
    "attribute value": (
        lambda r: _edit_attributes(r, _bad_value),
        ATTRIBUTE_FILE,
        "setup",
        "line 6: expected 1 or -1",
    ),
    "header": (
        lambda r: _edit_attributes(r, _bad_header),
        ATTRIBUTE_FILE,
        "init",
        "line 2: expected the 40 CelebA attribute names",
    ),
}


STAGES = ("init", "setup", "read")


def _load(root: Path, until: str) -> None:
    """Construct the datamodule, then set it up, then read every sample, stopping at `until`."""
    dm = CelebAMaskHQDataModule(str(root), image_size=(MASK, MASK), augment=False)
    if until == "init":
        return
    dm.setup("fit")
    if until == "setup":
        return
    for ds in dm.datasets.values():
        for k in range(len(ds)):
            ds[k]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_the_file(copy: Path, case: str) -> None:
    mutate, name, where, message = BAD_INPUTS[case]
    mutate(copy)
    for stage in STAGES[: STAGES.index(where)]:
        _load(copy, stage)  # the earlier stages do not notice
    pattern = re.escape(str(copy / name)) + ".*" + message
    with pytest.raises((FileNotFoundError, ValueError), match=pattern):
        _load(copy, where)
    problems = check_celebamask(copy)
    assert any(re.search(pattern, p) for p in problems), problems


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot be downloaded here") as info:
        CelebAMaskHQDataModule(str(tmp_path / "nowhere"))
    assert "CelebA-HQ-img/{id}.jpg" in str(info.value)
    assert "write_synthetic_celebamask" in str(info.value)
    assert len(check_celebamask(tmp_path / "nowhere")) == 1


def test_targets_and_tasks(root: Path) -> None:
    dm = CelebAMaskHQDataModule(str(root), tasks=["seg", "smile"])  # before setup
    attributes = [a.lower() for a in ATTRIBUTES]
    assert dm.targets == {
        "seg": TargetSpec("seg", num_classes=3),
        **{a: TargetSpec("binary") for a in [*attributes, "smile"]},
    }
    assert CelebAMaskHQDataModule(str(root), parts="19").targets["seg"].num_classes == 19
    custom = CelebAMaskHQDataModule(str(root), parts={"hair": 1, "l_eye": 2, "r_eye": 3})
    assert custom.targets["seg"].num_classes == 4
    assert custom.flip_label_map == (0, 1, 3, 2)
    assert "smile" not in CelebAMaskHQDataModule(str(root)).targets
    with pytest.raises(ValueError, match=r"cannot provide \['beard'\]; available targets: \['seg'"):
        CelebAMaskHQDataModule(str(root), tasks=["beard"])
    with pytest.raises(ValueError, match="unknown CelebAMask-HQ parts"):
        CelebAMaskHQDataModule(str(root), parts={"beard": 1})


@pytest.mark.parametrize("augment", [False, True])
def test_batches(root: Path, augment: bool) -> None:
    dm = _datamodule(root, tasks=["seg", "male", "smile"], augment=augment, image_size=(24, 20))
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "seg", "male", "smile"}
        b = len(batch["image"])
        assert batch["image"].shape == (b, 3, 24, 20) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= 0 and batch["image"].max() <= 1
        assert batch["seg"].shape == (b, 24, 20) and batch["seg"].dtype == torch.int64
        assert set(batch["seg"].unique().tolist()) <= {0, 1, 2, 255}
        for key in ("male", "smile"):
            assert batch[key].shape == (b,) and batch[key].dtype == torch.float32


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}


def test_synthesize_in_prepare_data(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    options = {"image_size": (MASK, MASK), "augment": False, "tasks": ["seg", "male", "smile"]}
    dm = CelebAMaskHQDataModule(str(root), synthesize=24, **options)  # no root yet: no check
    assert dm.targets["seg"].num_classes == 3 and not root.exists()
    with pytest.raises(FileNotFoundError, match=r"does not exist yet: with synthesize=24"):
        dm.setup("fit")  # setup without prepare_data says what is missing
    dm.prepare_data()
    assert check_celebamask(root) == []
    assert len(list((root / "CelebA-HQ-img").iterdir())) == 24
    with Image.open(image_path(root, 0)) as im:
        assert im.size == (SIDE, SIDE)  # twice image_size: the masks come at image_size
    dm.setup("fit")
    sizes = {split: len(ds) for split, ds in dm.datasets.items()}
    assert sum(sizes.values()) == 24 and min(sizes.values()) > 0, sizes
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, MASK, MASK) and set(batch["seg"].unique().tolist()) <= {
        0,
        1,
        2,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["faces"]  # no partial folder left

    before = _mtimes(root)
    again = CelebAMaskHQDataModule(str(root), synthesize=24, **options)  # checked in __init__
    again.prepare_data()  # the root exists: nothing rewritten
    again.setup("fit")
    assert _mtimes(root) == before
    assert _split_ids(again) == _split_ids(dm)
    assert _split_ids(_datamodule(root, tasks=["male"])) == _split_ids(dm)  # synthesize=0


def test_interrupted_synthesis_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "faces"
    render = celebamask_writer._render
    calls = []

    def crash_halfway(*args, **kwargs):
        calls.append(1)
        if len(calls) > 6:
            raise RuntimeError("killed halfway")
        return render(*args, **kwargs)

    dm = CelebAMaskHQDataModule(str(root), synthesize=12, image_size=(MASK, MASK))
    monkeypatch.setattr(celebamask_writer, "_render", crash_halfway)
    with pytest.raises(RuntimeError, match="killed halfway"):
        dm.prepare_data()
    assert len(calls) == 7  # six faces were on disk when it failed
    assert list(tmp_path.iterdir()) == []  # neither the root nor the partial folder
    with pytest.raises(FileNotFoundError, match="cannot be downloaded here"):
        CelebAMaskHQDataModule(str(root))  # no root: the usual message
    monkeypatch.undo()
    # a killed process leaves only a hidden partial folder: it is never read, and rewritten
    stale = partial_path(root)
    write_synthetic_celebamask(stale, 3, SIDE)
    (stale / "junk").touch()
    dm.prepare_data()
    assert check_celebamask(root) == [] and not (root / "junk").exists()
    assert len(list((root / "CelebA-HQ-img").iterdir())) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["faces"]


def test_write_root_once_keeps_a_root_written_meanwhile(tmp_path: Path) -> None:
    root = tmp_path / "faces"

    def racing_writer(folder: Path) -> None:  # another process finishes first
        write_synthetic_celebamask(folder, 2, SIDE)
        write_synthetic_celebamask(root, 3, SIDE)

    assert not write_root_once(root, racing_writer)
    assert [p.name for p in tmp_path.iterdir()] == ["faces"]
    assert len(list((root / "CelebA-HQ-img").iterdir())) == 3
    assert not write_root_once(root, racing_writer)  # exists: the writer is not called

    def bad_root(folder: Path) -> None:
        (folder / "CelebA-HQ-img").mkdir(parents=True)

    with pytest.raises(FileNotFoundError, match="missing"):
        write_root_once(tmp_path / "bad", bad_root, check=CelebAMaskHQDataModule._check_root)
    assert [p.name for p in tmp_path.iterdir()] == ["faces"]  # a root failing its check is dropped


def test_fit_from_synthesized_root(tmp_path: Path) -> None:
    tasks = ["seg", "male", "smile"]
    dm = CelebAMaskHQDataModule(
        str(tmp_path / "faces"), tasks=tasks, synthesize=24, image_size=(32, 32), batch_size=8
    )
    module = tiny_module(dm, tasks)
    trainer = tiny_trainer(tmp_path, enable_checkpointing=False)
    trainer.fit(module, dm)  # the Trainer's prepare_data writes the root, setup reads it
    assert check_celebamask(tmp_path / "faces") == []
    assert sum(len(ds) for ds in dm.datasets.values()) == 24
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["val/loss"])
    assert {t for t in tasks if any(k.startswith(f"val/{t}/") for k in metrics)} == set(tasks)
