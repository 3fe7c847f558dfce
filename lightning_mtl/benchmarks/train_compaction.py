"""The train_compaction part: the total training wall time of one config with and without
`TrainTimeCompaction`, over seeds, and what the compacted runs' metrics are next to the dense
runs' seed spread.

Every run is `lightning-mtl fit` of `train_compaction_config` (its data written before the
clock starts); the run without the option drops the config's trainer callbacks
(`--trainer.callbacks []`), which is where the config puts `TrainTimeCompaction`. The two runs
of a seed follow each other, in alternating order, so machine noise hits both alike. Timed is
`trainer.fit`: sanity check, every training and validation epoch, checkpoints.

Its figures (`--json`): `train_compaction_speedup` (total time without / with),
`train_compaction_group_pct_first_third` (the dense runs' mean % zero groups after the first
third of the epochs) and `train_compaction_metrics` (per main metric: mean and std without and
with, and whether the compacted runs' mean lies within the dense runs' seed range).
"""

from __future__ import annotations

import csv
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.options import BenchOptions
from lightning_mtl.benchmarks.timing import Stopwatch
from lightning_mtl.pipelines.fit import build_cli

MODES = ("without", "with")


def timed_fit(config: str, seed: int, compaction: bool, root: Path, extra: list[str]) -> dict:
    """One fit: its wall time (s), final validation metrics, the % zero groups per epoch and
    the model's parameter count at the end."""
    name = f"{MODES[compaction]}_seed{seed}"
    args = ["--config", config, *extra, "--seed_everything", str(seed)]
    args += ["--run.root", str(root), "--run.name", name, "--run.logger", "csv"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if not compaction:
        args += ["--trainer.callbacks", "[]"]
    cli = build_cli(args, run=False)
    cli.datamodule.prepare_data()  # the synthetic scenes are written once, untimed
    with Stopwatch() as fit:
        cli.trainer.fit(cli.model, cli.datamodule)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    with open(root / name / "metrics.csv") as f:
        group_pct = [
            float(r["sparsity/group_pct"]) for r in csv.DictReader(f) if r.get("sparsity/group_pct")
        ]
    main = [f"val/{k}/{t.main_metric}" for k, t in cli.model.tasks.items()]
    params = sum(p.numel() for p in cli.model.parameters())
    return {
        "seconds": fit.seconds,
        "metrics": metrics,
        "group_pct": group_pct,
        "main": main,
        "params_at_end": params,
    }


def measure(options: BenchOptions) -> list[dict[str, Any]]:
    """Every seed's pair of runs, alternating which goes first."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(options.train_compaction_seeds):
            order = (False, True) if i % 2 == 0 else (True, False)
            for compaction in order:
                run = timed_fit(
                    options.train_compaction_config,
                    seed,
                    compaction,
                    Path(tmp),
                    list(options.train_compaction_args),
                )
                runs.append({"seed": seed, "compaction": compaction, **run})
    return runs


def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed-up, early sparsity and the metric comparison (see the module docstring)."""
    by_mode = {mode: [r for r in runs if r["compaction"] == (mode == "with")] for mode in MODES}
    total = {mode: sum(r["seconds"] for r in rs) for mode, rs in by_mode.items()}
    dense = by_mode["without"]
    third = max(1, math.ceil(len(dense[0]["group_pct"]) / 3)) - 1
    metrics = {}
    for key in [*dense[0]["main"], "val/loss"]:
        values = {mode: [r["metrics"][key] for r in rs] for mode, rs in by_mode.items()}
        row = {}
        for mode, vs in values.items():
            row[f"mean_{mode}"] = statistics.fmean(vs)
            row[f"std_{mode}"] = statistics.stdev(vs) if len(vs) > 1 else 0.0
        row["within_spread"] = min(values["without"]) <= row["mean_with"] <= max(values["without"])
        metrics[key] = row
    return {
        "train_compaction_speedup": total["without"] / total["with"],
        "train_compaction_seconds": total,
        "train_compaction_group_pct_first_third": statistics.fmean(
            r["group_pct"][third] for r in dense
        ),
        "train_compaction_metrics": metrics,
    }


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Run every pair, print the table; `{"train_compaction": runs, **figures(runs)}`."""
    runs = measure(options)
    out = figures(runs)
    seeds = options.train_compaction_seeds
    table = Table(
        title=f"train-time compaction, {options.train_compaction_config}, seeds {seeds}",
        caption=f"total fit time {out['train_compaction_seconds']['without']:.1f} s without, "
        f"{out['train_compaction_seconds']['with']:.1f} s with: "
        f"{out['train_compaction_speedup']:.2f}× faster; dense runs "
        f"{out['train_compaction_group_pct_first_third']:.1f} % zero groups after the first "
        "third of the epochs",
    )
    for column in ("metric", "without (mean ± std)", "with (mean ± std)", "within spread"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, row in out["train_compaction_metrics"].items():
        table.add_row(
            key,
            f"{row['mean_without']:.4f} ± {row['std_without']:.4f}",
            f"{row['mean_with']:.4f} ± {row['std_with']:.4f}",
            "yes" if row["within_spread"] else "no",
        )
    console.print(table)
    return {"train_compaction": runs, **out}
