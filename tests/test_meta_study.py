"""`lightning-mtl meta-study`: variants × seeds of real meta runs, the λ and meta-test tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lightning_mtl.cli.main import main
from lightning_mtl.meta.study import StudyRun, lambda_table, meta_test_table
from tests.helpers import ROOT, TINY_META_ARGS

META = ROOT / "experiments" / "meta"


def study_file(tmp_path: Path, seeds: list[int], scenes: int = 48) -> Path:
    """The shipped study's two variants on tiny settings (`scenes` synthetic scenes), rooted in
    tmp_path."""
    data = "--data.init_args.datamodule.init_args."
    args = [
        *TINY_META_ARGS,
        f"{data}root",
        str(tmp_path / "data"),
        f"{data}synthesize",
        str(scenes),
    ]
    path = tmp_path / "study.yaml"
    path.write_text(
        "variants:\n"
        f"  default: [{META / 'synthetic.yaml'}]\n"
        f"  authors: [{META / 'synthetic.yaml'}, {META / 'variants' / 'authors.yaml'}]\n"
        f"seeds: {seeds}\n"
        f"root: {tmp_path / 'study'}\n"
        f"args: {args!r}\n"
    )
    return path


@pytest.mark.slow
def test_study_runs_every_variant_and_seed_then_tables_and_figure(tmp_path, capsys):
    config = study_file(tmp_path, [0, 1])
    main(["meta-study", "--config", str(config)])
    root = tmp_path / "study"
    for variant in ("default", "authors"):
        for seed in (0, 1):
            run = root / variant / f"seed-{seed}"
            assert (run / "meta_test" / "meta_test.json").is_file()
            saved = (run / "config.yaml").read_text()
            assert f"seed_everything: {seed}" in saved
    authors = (root / "authors" / "seed-0" / "config.yaml").read_text()
    assert "explicit_penalty: adapted" in authors and "query_split: val" in authors
    assert "explicit_penalty: none" in (root / "default" / "seed-0" / "config.yaml").read_text()
    # the seeds drew different meta-batches: their λ paths differ
    lambdas = {seed: read_csv(root / "default" / f"seed-{seed}" / "metrics.csv") for seed in (0, 1)}
    assert [r["lambda"] for r in lambdas[0]] != [r["lambda"] for r in lambdas[1]]
    rows = read_csv(root / "study.csv")
    assert len(rows) == 2 * 2 * 4  # variants × seeds × (seen, unseen) × (meta, scratch)
    assert {(r["variant"], r["seed"]) for r in rows} == {
        (v, s) for v in ("default", "authors") for s in ("0", "1")
    }
    study = (root / "study.md").read_text()
    assert "| default | 0, 1 | 0.001 |" in study and "| authors | 0, 1 | 0.001 |" in study
    assert "test/edge/ods_f1 (↑)" in study and "test/depth/abs_err (↓)" in study
    assert (root / "lambda_curves.png").stat().st_size > 10_000
    assert study in capsys.readouterr().out
    # a rerun skips every complete run and writes the same tables
    before = (root / "default" / "seed-0" / "metrics.csv").stat().st_mtime_ns
    main(["meta-study", "--config", str(config)])
    assert (root / "default" / "seed-0" / "metrics.csv").stat().st_mtime_ns == before
    assert capsys.readouterr().out.count("complete, skipped") == 4
    assert (root / "study.md").read_text() == study


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_failing_run_is_reported_the_others_tabled_and_the_exit_status_is_1(tmp_path, capsys):
    # 12 scenes leave one validation image: the authors' variant (queries from val) cannot run
    config = study_file(tmp_path, [0], scenes=12)
    with pytest.raises(SystemExit) as exit_info:
        main(["meta-study", "--config", str(config)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert (
        "authors/seed-0: ValueError: query_size = 4 exceeds the 1 samples of the val split" in out
    )
    study = (tmp_path / "study" / "study.md").read_text()
    assert "| default | 0 |" in study and "| authors |" not in study


def test_study_refuses_a_missing_config_file(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(f"variants: {{a: [{tmp_path / 'nope.yaml'}]}}\nroot: {tmp_path}\n")
    with pytest.raises(FileNotFoundError, match=r"variant 'a': config file .*nope.yaml does not"):
        main(["meta-study", "--config", str(config)])


def study_run(variant: str, seed: int, lambdas: list[float], metrics: dict) -> StudyRun:
    """A run with a constructed λ path and meta-test rows (main metric per init)."""
    rows = [
        {"phase": "seen", "init": init, "tasks": "seg+depth", "group_pct": 10.0 * seed, **values}
        for init, values in metrics.items()
    ]
    meta_test = {
        "rows": rows,
        "main_metrics": {"seg": "iou", "depth": "abs_err"},
        "higher_is_better": {"seg": {"iou": True}, "depth": {"abs_err": False}},
    }
    return StudyRun(variant, seed, list(range(len(lambdas))), lambdas, 1e-3, meta_test)


def test_tables_count_directions_and_wins_by_hand():
    runs = [
        study_run("v", 0, [1e-3, 2e-3, 2e-3, 2e-3], {
            "meta": {"test/seg/iou": 0.6, "test/depth/abs_err": 1.0},
            "scratch": {"test/seg/iou": 0.5, "test/depth/abs_err": 2.0},
        }),
        study_run("v", 1, [1e-3, 8e-4, 6e-4, 5e-4], {
            "meta": {"test/seg/iou": 0.4, "test/depth/abs_err": 1.5},
            "scratch": {"test/seg/iou": 0.5, "test/depth/abs_err": 3.0},
        }),
    ]  # fmt: skip
    lam = lambda_table(runs)
    # λ*: 2e-3 and 5e-4 → mean 1.25e-3, sample std 1.06e-3; rose in 1 of 2; the last quarter
    # (from the 4th logged value) changed by 0 % for both
    assert "| v | 0, 1 | 0.001 | 0.00125 ± 0.0011 | 0.0005 – 0.002 | 1/2 | +0 %, +0 % |" in lam
    table = meta_test_table(runs)
    # IoU: meta 0.5 ± 0.1414 vs scratch 0.5 ± 0, meta better in 1/2; abs. error (lower is
    # better): meta 1.25 ± 0.3536 vs 2.5 ± 0.7071, better in 2/2
    # groups zero: 0 % (seed 0) and 10 % (seed 1) for both inits → mean 5.0
    assert "| test/seg/iou (↑) | 0.5000 ± 0.1414 | 0.5000 ± 0.0000 | 1/2 | 5.0 / 5.0 |" in table
    assert (
        "| test/depth/abs_err (↓) | 1.2500 ± 0.3536 | 2.5000 ± 0.7071 | 2/2 | 5.0 / 5.0 |" in table
    )
