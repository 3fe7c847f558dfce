"""`lightning-mtl data check` on good and broken roots of both datasets."""

from __future__ import annotations

import pytest

from datamodules.celebamask import write_synthetic_celebamask
from datamodules.check import DATASET_CHECKERS, DatasetChecker
from datamodules.nyuv2 import write_synthetic_nyuv2
from lightning_mtl.cli.main import main


def _check(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", *args])
    return exit_info.value.code, capsys.readouterr().out


def test_nyuv2_root_is_checked_and_a_broken_file_is_named(tmp_path, capsys):
    root = write_synthetic_nyuv2(tmp_path / "nyu", "mtan", 4, 2, (24, 32), 0)
    code, out = _check(capsys, "--data", "nyuv2", "--root", str(root))
    assert code == 0
    assert "no problems found" in out
    broken = root / "train" / "depth" / "1.npy"
    broken.write_bytes(broken.read_bytes()[:40])
    code, out = _check(capsys, "--data", "nyuv2", "--root", str(root), "--format", "mtan")
    assert code == 1
    assert str(broken) in out.replace("\n", "")
    assert "1 problem(s)" in out


def test_celebamask_root_is_checked_and_a_missing_image_is_named(tmp_path, capsys):
    root = write_synthetic_celebamask(tmp_path / "celeba", 6, image_size=32, seed=0)
    code, out = _check(capsys, "--data", "celebamask", "--root", str(root))
    assert code == 0
    image = root / "CelebA-HQ-img" / "3.jpg"
    image.unlink()
    code, out = _check(capsys, "--data", "celebamask", "--root", str(root))
    assert code == 1
    assert "3.jpg" in out


def test_a_config_file_gives_the_options(tmp_path, capsys):
    root = write_synthetic_nyuv2(tmp_path / "nyu", "mtan", 4, 2, (24, 32), 0)
    config = tmp_path / "check.yaml"
    config.write_text(f"data: nyuv2\nroot: {root}\nformat: mtan\n")
    code, out = _check(capsys, "--config", str(config))
    assert code == 0
    assert f"{root}: no problems found (nyuv2)" in out.replace("\n", "")


def test_nyud_mt_without_a_test_list_is_a_note_not_a_problem(tmp_path, capsys):
    root = write_synthetic_nyuv2(tmp_path / "nyu", "nyud_mt", 4, 2, (24, 32), 0)
    (root / "gt_sets" / "test.txt").rename(root / "gt_sets" / "val.txt")
    code, out = _check(capsys, "--data", "nyuv2", "--root", str(root))
    out = out.replace("\n", "")
    assert code == 0
    assert f"note: {root}: no {root / 'gt_sets' / 'test.txt'}; the test split is the val" in out
    assert "no problems found" in out


def test_an_unknown_dataset_is_a_usage_error_listing_the_registered_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--data", "nyu", "--root", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "unknown dataset 'nyu'; choose one of ['nyuv2', 'celebamask', 'manifest']" in error


def test_a_registered_checker_is_run_by_name(tmp_path, capsys):
    def problems(root: str, format: str, columns: object) -> list[str]:
        return [f"{root}: empty ({format})"]

    DATASET_CHECKERS.register("mine", DatasetChecker(problems))
    try:
        code, out = _check(capsys, "--data", "mine", "--root", str(tmp_path))
    finally:
        DATASET_CHECKERS.unregister("mine")
    assert code == 1
    assert f"problem: {tmp_path}: empty (auto)" in out.replace("\n", "")
