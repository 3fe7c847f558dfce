"""Sweeps (`lightning-mtl sweep`, `run`) and reports (`lightning-mtl report`) on a tiny real
sweep: the table's numbers are recomputed here straight from the CSV logs."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from lightning_mtl.cli.main import main
from lightning_mtl.pipelines.report import report
from lightning_mtl.pipelines.sweep import grid, load_sweep, run_sweep
from tests.helpers import TINY_DATA, TINY_MODEL, run_config

ROOT = Path(__file__).resolve().parents[1]
TASKS = [["seg"], ["depth"], ["seg", "depth"]]
LAMBDAS = [0, 0.5]
SEEDS = [0, 1]
HIGHER = {"seg": True, "depth": False}
MAIN = {"seg": "iou", "depth": "abs_err"}


def tiny_base(folder: Path) -> Path:
    """A tiny `lightning-mtl fit` config: in-memory synthetic data, 2 epochs, CSV only."""
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            **TINY_MODEL,
            "tasks": ["seg"],
            "lambda_": 0.0,
            "optimizer": {"class_path": "lightning_mtl.ProxAdamW", "init_args": {"lr": 1e-2}},
        },
        "data": {
            "class_path": "datamodules.SyntheticDataModule",
            "init_args": {**TINY_DATA, "image_size": list(TINY_DATA["image_size"])},
        },
        "run": {"logger": "csv"},
    }
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sweep_file(folder: Path, name: str, tasks, lambdas, seeds, extra_args=()) -> Path:
    command = ["${env}", "lightning-mtl", "run", "--config", str(tiny_base(folder))]
    command += ["--run.root", str(folder / name), *extra_args, "${args}"]
    spec = {
        "name": name,
        "method": "grid",
        "command": command,
        "parameters": {
            "model.tasks": {"values": tasks},
            "model.lambda_": {"values": lambdas},
            "seed_everything": {"values": seeds},
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = sweep_file(folder, "tiny", TASKS, LAMBDAS, SEEDS)
    main(["sweep", str(path)])
    return load_sweep(path)


def names(tasks=TASKS, lambdas=LAMBDAS, seeds=SEEDS) -> set[str]:
    return {f"{'+'.join(t)}_lam{lam:g}_seed{s}" for t in tasks for lam in lambdas for s in seeds}


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def from_log(run: Path) -> dict[str, float]:
    """Test metrics and the sparsity at the lowest val/loss epoch, read from metrics.csv."""
    rows = log_rows(run)
    val = [r for r in rows if r.get("val/loss")]
    best = min(val, key=lambda r: float(r["val/loss"]))
    sparsity = [r for r in rows if r["epoch"] == best["epoch"] and r.get("sparsity/group_pct")]
    values = {k: float(sparsity[-1][k]) for k in ("sparsity/group_pct", "sparsity/param_pct")}
    for row in rows:
        values |= {k: float(v) for k, v in row.items() if k.startswith("test/") and v}
    return values


@pytest.mark.slow
def test_the_sweep_completes_every_grid_run_in_its_named_folder(sweep):
    assert len(sweep) == 12
    folders = {p.name for p in sweep.root.iterdir() if p.is_dir()}
    assert folders == names()
    for name in folders:
        result = json.loads((sweep.root / name / "result.json").read_text())
        assert result["epochs"] == 2 and Path(result["checkpoint"]).name == "best.ckpt"
        assert "+".join(result["main_metrics"]) == result["tasks"]


@pytest.mark.slow
def test_a_rerun_skips_complete_runs_and_finishes_partial_ones(sweep, capsys):
    partial = sweep.root / "seg_lam0.5_seed1"
    (partial / "result.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in sweep.root.glob("*/result.json")}
    assert run_sweep(sweep) == []
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert capsys.readouterr().out.count("complete, skipped") == 11
    result = json.loads((partial / "result.json").read_text())
    assert result["epochs"] == 2  # resumed from last.ckpt at the end: not trained again
    epochs = [int(r["epoch"]) for r in log_rows(partial) if r.get("val/loss")]
    assert epochs == [0, 1]


@pytest.mark.slow
def test_a_resumed_run_keeps_the_epochs_it_logged_before(sweep, tmp_path):
    shutil.copytree(sweep.root / "seg_lam0.5_seed1", tmp_path / "seg_lam0.5_seed1")
    (tmp_path / "seg_lam0.5_seed1" / "result.json").unlink()
    point = ["--model.tasks=['seg']", "--model.lambda_=0.5", "--seed_everything=1"]
    main(["run", *sweep.args, "--run.root", str(tmp_path), *point, "--trainer.max_epochs=3"])
    result = json.loads((tmp_path / "seg_lam0.5_seed1" / "result.json").read_text())
    assert result["epochs"] == 3
    rows = log_rows(tmp_path / "seg_lam0.5_seed1")
    assert [int(r["epoch"]) for r in rows if r.get("val/loss")] == [0, 1, 2]
    first = [r for r in log_rows(sweep.root / "seg_lam0.5_seed1") if r.get("val/loss")]
    assert [r for r in rows if r.get("val/loss")][:2] == first


@pytest.mark.slow
def test_the_table_matches_the_logs(sweep, tmp_path):
    result = report(sweep.root, tmp_path / "report", spy=False)
    assert not result.left_out and not result.notes
    rows = {(r.tasks, r.lambda_): r for r in result.rows}
    assert set(rows) == {("+".join(t), float(lam)) for t in TASKS for lam in LAMBDAS}
    with open(tmp_path / "report" / "table.csv", newline="") as file:
        table = {(r["tasks"], float(r["lambda"])): r for r in csv.DictReader(file)}
    logs = {name: from_log(sweep.root / name) for name in names()}
    means = {}
    for tasks in TASKS:
        for lam in LAMBDAS:
            label = "+".join(tasks)
            line = table[label, float(lam)]
            runs = [logs[f"{label}_lam{lam:g}_seed{s}"] for s in SEEDS]
            keys = [k for k in runs[0] if k.startswith("test/") and not k.endswith("/loss")]
            keys += ["sparsity/group_pct", "sparsity/param_pct"]
            assert {f"test/{t}/{MAIN[t]}" for t in tasks} <= set(keys)
            for key in keys:
                values = [r[key] for r in runs]
                assert float(line[key]) == pytest.approx(statistics.mean(values), rel=1e-9)
                assert float(line[f"{key} std"]) == pytest.approx(statistics.stdev(values))
            means[label, lam] = {t: statistics.mean(r[f"test/{t}/{MAIN[t]}"] for r in runs)
                                 for t in tasks}  # fmt: skip
            assert int(line["seeds"]) == len(SEEDS)
    for (label, lam), mean in means.items():
        changes = [
            (1 if HIGHER[t] else -1) * (m - means[t, 0][t]) / means[t, 0][t]
            for t, m in mean.items()
        ]
        expected = 100 * statistics.mean(changes)
        assert float(table[label, float(lam)]["delta_m_pct"]) == pytest.approx(expected)
        if label in ("seg", "depth") and lam == 0:
            assert expected == 0
    assert float(table["seg", 0.5]["sparsity/group_pct"]) > 0  # λ = 0.5 zeroed groups
    assert float(table["seg", 0.0]["sparsity/group_pct"]) == 0
    md = (tmp_path / "report" / "table.md").read_text()
    assert "### Synthetic: seg+depth" in md and "| group_lasso | 0.5 | 2 |" in md


@pytest.mark.slow
def test_figures_and_spy_plots_are_written(sweep, tmp_path):
    result = report(sweep.root, tmp_path / "report", latency_rounds=1)
    written = {p.relative_to(tmp_path / "report").as_posix() for p in result.figures}
    expected = {f"Synthetic_{n}.png" for n in ("metric_vs_lambda", "sparsity_vs_lambda",
                                                "sparsification", "layers", "latency")}  # fmt: skip
    expected |= {f"spy/{'+'.join(t)}_lam{lam:g}_seed0.png" for t in TASKS for lam in LAMBDAS}
    assert written == expected
    for path in result.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "report" / "report.md").read_text()
    assert all(f"]({p})" in index for p in written)
    again = report(sweep.root, spy=False)  # into RUNS/report, twice: that folder is no run
    assert report(sweep.root, spy=False).left_out == again.left_out == {}
    shutil.rmtree(sweep.root / "report")


@pytest.mark.slow
def test_missing_and_partial_logs_are_named_and_left_out_of_the_means(sweep, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(sweep.root, root)
    full = report(sweep.root, tmp_path / "full", spy=False)
    (root / "seg_lam0_seed1" / "result.json").unlink()  # an unfinished run
    (root / "depth_lam0.5_seed1" / "metrics.csv").unlink()  # a lost log
    log = root / "seg+depth_lam0.5_seed0" / "metrics.csv"  # a log without its test rows
    with open(log, newline="") as file:
        header = next(csv.reader(file))
    kept = [r for r in log_rows(sweep.root / "seg+depth_lam0.5_seed0") if not r.get("test/loss")]
    with open(log, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in header} for r in kept)
    (root / "notes").mkdir()  # not a run folder
    partial = report(root, tmp_path / "partial", spy=False)
    assert set(partial.left_out) == {
        "seg_lam0_seed1", "depth_lam0.5_seed1", "seg+depth_lam0.5_seed0", "notes"
    }  # fmt: skip
    assert "no result.json" in partial.left_out["seg_lam0_seed1"]
    assert "no metrics.csv" in partial.left_out["depth_lam0.5_seed1"]
    assert "no test/seg/iou" in partial.left_out["seg+depth_lam0.5_seed0"]
    rows = {(r.tasks, r.lambda_): r for r in partial.rows}
    full_rows = {(r.tasks, r.lambda_): r for r in full.rows}
    survivor = from_log(sweep.root / "seg_lam0_seed0")["test/seg/iou"]
    assert rows["seg", 0.0].seeds == [0]
    assert rows["seg", 0.0].values("test/seg/iou") == [pytest.approx(survivor)]
    assert rows["seg", 0.5].values("test/seg/iou") == full_rows["seg", 0.5].values("test/seg/iou")
    index = (tmp_path / "partial" / "report.md").read_text()
    assert "## Left out" in index and "`depth_lam0.5_seed1`: no metrics.csv" in index


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
    path = sweep_file(tmp_path, "broken", [["nonsense"], ["seg"]], [0], [0])
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "run 1 failed" in out and "1/2 runs complete" in out
    assert (tmp_path / "broken" / "seg_lam0_seed0" / "result.json").is_file()


@pytest.mark.slow
def test_wandb_runs_carry_the_sweep_group_and_the_run_fields(tmp_path):
    wandb = ["--run.logger", "wandb", "--run.group", "wb"]
    path = sweep_file(tmp_path, "wb", [["seg", "depth"]], [0.01], [3], wandb)
    main(["sweep", str(path)])
    files = list((tmp_path / "wb" / "seg+depth_lam0.01_seed3").glob("wandb/offline-run-*/*.wandb"))
    assert len(files) == 1
    config, group = run_config(files[0])
    assert group == "wb"
    assert config["run"] == {
        "dataset": "Synthetic", "tasks": "seg+depth", "lambda": 0.01, "penalty": "group_lasso",
        "seed": 3,
    }  # fmt: skip


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "sweeps").glob("*.yaml")))
def test_every_sweep_file_expands_into_printable_run_configs(path, capsys):
    sweep = load_sweep(path)
    points = list(grid(sweep))
    assert len(points) == len(sweep) >= 3
    for args in (points[0], points[-1]):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", *args, "--print_config"])
        assert exit_info.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["run"]["root"] == str(sweep.root)
        assert printed["model"]["tasks"] and printed["model"]["lambda_"] is not None


def test_bad_sweep_files_are_rejected_with_the_reason(tmp_path):
    def bad(change: dict) -> str:
        spec = yaml.safe_load((ROOT / "experiments" / "sweeps" / "synthetic.yaml").read_text())
        spec.update(change)
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(ValueError, match=str(path)) as raised:
            load_sweep(path)
        return str(raised.value)

    assert "method must be `grid`" in bad({"method": "bayes"})
    assert "command must be" in bad({"command": ["python", "train.py"]})
    assert "cannot be swept" in bad({"parameters": {"trainer.max_epochs": {"values": [1, 2]}}})
    assert "exactly one of" in bad({"parameters": {"model.lambda_": {"min": 0, "max": 1}}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")
