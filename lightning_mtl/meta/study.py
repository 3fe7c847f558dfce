"""`lightning-mtl meta-study`: meta-sparsity variants × seeds, to see whether λ moves the same way
for every seed and whether the meta-learned start beats scratch every time.

Each (variant, seed) is one `lightning-mtl meta` run in `ROOT/VARIANT/seed-S` (a complete one,
with its `result.json` or, from before, `meta_test/meta_test.json`, is skipped; a partial one
resumes from its last checkpoint).
The study then writes `study.md` (λ per variant and the seen/unseen meta-test, mean ± std over
seeds), `study.csv` (every run's λ and meta-test rows) and `lambda_curves.png` (λ over the outer
steps, every seed) to ROOT.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_mtl.meta.meta_test import META_TEST_RESULT
from lightning_mtl.reporting.figures import lambda_curves, save_figure
from lightning_mtl.reporting.tables import mean_std
from lightning_mtl.runs import is_complete
from lightning_mtl.tables import markdown_table, write_csv


@dataclass
class MetaStudyOptions:
    """What a meta-sparsity study runs.

    Args:
        variants: variant name → the config files of its `lightning-mtl meta` runs (later files
            override earlier ones, e.g. a base config and a variant overlay).
        seeds: the seeds every variant runs with (`seed_everything` and the meta-batch draws).
        root: the study folder (run folders `ROOT/VARIANT/seed-S`, the tables and the figure).
        args: further `lightning-mtl meta` arguments for every run, e.g.
            `["--trainer.max_epochs", "12"]`.
    """

    variants: dict[str, list[str]]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    root: str = "runs/meta-study"
    args: list[str] = field(default_factory=list)


@dataclass
class StudyRun:
    """One finished (variant, seed) run as the study reads it back."""

    variant: str
    seed: int
    steps: list[int]
    lambdas: list[float]  # λ at step 0 (lambda_init) and at each logged outer step
    lambda_init: float
    meta_test: dict[str, Any]  # meta_test.json: rows, main_metrics, higher_is_better

    @property
    def final_lambda(self) -> float:
        return self.lambdas[-1]

    @property
    def late_change(self) -> float:
        """Relative change of λ over the last quarter of the logged steps (how settled it is)."""
        start = self.lambdas[(3 * len(self.lambdas)) // 4]
        return self.final_lambda / start - 1


@dataclass
class StudyResult:
    """The runs read back, the runs that failed (folder → error) and the files written."""

    runs: list[StudyRun]
    failed: dict[str, str]
    files: list[Path]


def run_folder(root: Path, variant: str, seed: int) -> Path:
    return root / variant / f"seed-{seed}"


def run_study(options: MetaStudyOptions) -> StudyResult:
    """Run every (variant, seed) not yet complete, one after another, then write the study.

    A failing run is reported and the study goes on with the others (and leaves it out)."""
    from lightning_mtl.meta.pipeline import run_meta

    root = Path(options.root)
    if not options.variants or not options.seeds:
        raise ValueError("a meta-study needs at least one variant and one seed")
    for variant, configs in options.variants.items():
        if not configs:
            raise ValueError(f"variant {variant!r} lists no config file")
        for config in configs:
            if not Path(config).is_file():
                raise FileNotFoundError(f"variant {variant!r}: config file {config} does not exist")
    failed: dict[str, str] = {}
    for variant, configs in options.variants.items():
        for seed in options.seeds:
            folder = run_folder(root, variant, seed)
            if is_complete(folder):
                print(f"[meta-study] complete, skipped: {folder}")
                continue
            print(f"[meta-study] {variant} seed {seed} → {folder}")
            config = {
                "config": list(configs),
                "seed_everything": seed,
                "data": {"init_args": {"seed": seed}},
                "run": {"root": str(folder.parent), "name": folder.name, "logger": "csv"},
            }
            try:
                run_meta(config, options.args)
            except Exception as error:  # one broken run must not stop the study
                print(f"[meta-study] {folder} failed: {type(error).__name__}: {error}")
                failed[str(folder)] = f"{type(error).__name__}: {error}"
    runs = [
        read_study_run(run_folder(root, variant, seed), variant, seed)
        for variant in options.variants
        for seed in options.seeds
        if str(run_folder(root, variant, seed)) not in failed
    ]
    return StudyResult(runs, failed, write_study(runs, root))


def read_study_run(folder: Path, variant: str, seed: int) -> StudyRun:
    """λ over the outer steps (metrics.csv) from its start at step 0 (config.yaml), and the
    meta-test."""
    result = folder / "meta_test" / META_TEST_RESULT
    if not result.is_file():
        raise FileNotFoundError(f"{folder}: no meta_test/{META_TEST_RESULT} (run incomplete)")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    by_step: dict[int, float] = {}
    with open(folder / "metrics.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row.get("lambda"):
                by_step[int(row["step"])] = float(row["lambda"])  # a resumed run logs again
    if not by_step:
        raise ValueError(f"{folder / 'metrics.csv'} has no `lambda` values")
    lambda_init = float(config["model"]["lambda_init"])
    steps = sorted(by_step)
    return StudyRun(
        variant=variant,
        seed=seed,
        steps=[0, *steps],
        lambdas=[lambda_init, *(by_step[s] for s in steps)],
        lambda_init=lambda_init,
        meta_test=json.loads(result.read_text()),
    )


def write_study(runs: Sequence[StudyRun], root: Path) -> list[Path]:
    """study.md, study.csv and lambda_curves.png of `runs` in `root`."""
    if not runs:
        raise ValueError(f"no complete meta-study run under {root}")
    curves: dict[str, list[tuple[int, Sequence[int], Sequence[float]]]] = {}
    for run in runs:
        curves.setdefault(run.variant, []).append((run.seed, run.steps, run.lambdas))
    figure = save_figure(lambda_curves(curves), root / "lambda_curves.png", dpi=110, tight=True)
    rows = [
        {
            "variant": r.variant,
            "seed": r.seed,
            "lambda_init": r.lambda_init,
            "lambda_final": r.final_lambda,
            **row,
        }
        for r in runs
        for row in r.meta_test["rows"]
    ]
    table = root / "study.csv"
    write_csv(rows, table)
    text = "\n".join(
        [
            f"# Meta-sparsity study: {root}",
            "",
            "## λ",
            "",
            lambda_table(runs),
            "",
            "## Meta-test",
            "",
            meta_test_table(runs),
            "",
            f"![λ over the outer steps]({figure.name})",
            "",
        ]
    )
    (root / "study.md").write_text(text)
    return [root / "study.md", table, figure]


def lambda_table(runs: Sequence[StudyRun]) -> str:
    """Per variant: λ's start, λ* (mean ± std, range), in how many seeds it rose, and how much
    it still moved over the last quarter of the steps."""
    header = [
        "variant",
        "seeds",
        "λ start",
        "λ* mean ± std",
        "λ* range",
        "λ rose in",
        "last-quarter change",
    ]
    body = []
    for variant, of_variant in _by_variant(runs).items():
        finals = [r.final_lambda for r in of_variant]
        mean, std = mean_std(finals)
        rose = sum(r.final_lambda > r.lambda_init for r in of_variant)
        changes = ", ".join(f"{100 * r.late_change:+.0f} %" for r in of_variant)
        body.append(
            [
                variant,
                ", ".join(str(r.seed) for r in of_variant),
                f"{of_variant[0].lambda_init:.3g}",
                f"{mean:.3g} ± {std:.2g}",
                f"{min(finals):.3g} – {max(finals):.3g}",
                f"{rose}/{len(of_variant)}",
                changes,
            ]
        )
    return markdown_table(header, body)


def meta_test_table(runs: Sequence[StudyRun]) -> str:
    """Per variant, phase, task set and task: the main metric from the meta-learned start and
    from scratch (mean ± std over seeds), in how many seeds the meta-learned start won, and the
    mean % of zero groups after fine-tuning."""
    header = ["variant", "phase", "tasks", "metric", "meta init", "scratch", "meta better in"]
    header.append("% groups zero (meta / scratch)")
    body = []
    for variant, of_variant in _by_variant(runs).items():
        rows = of_variant[0].meta_test["rows"]
        for phase, tasks in dict.fromkeys((r["phase"], r["tasks"]) for r in rows):
            for task in tasks.split("+"):
                body.append([variant, phase, tasks, *_task_cells(of_variant, phase, tasks, task)])
    return markdown_table(header, body)


def _task_cells(runs: Sequence[StudyRun], phase: str, tasks: str, task: str) -> list[str]:
    """The metric, meta, scratch, wins and zero-group cells of one task of a meta-test set."""
    first = runs[0].meta_test
    metric = first["main_metrics"][task]
    higher = first["higher_is_better"][task][metric]
    key = f"test/{task}/{metric}"
    meta, scratch = (_values(runs, phase, tasks, init, key) for init in ("meta", "scratch"))
    pairs = zip(meta, scratch, strict=True) if scratch else ()
    wins = sum((m > s) == higher for m, s in pairs if m != s)
    zero = [_values(runs, phase, tasks, init, "group_pct") for init in ("meta", "scratch")]
    return [
        f"{key} ({'↑' if higher else '↓'})",
        _mean_std(meta),
        _mean_std(scratch),
        f"{wins}/{len(meta)}" if scratch else "",
        " / ".join(f"{statistics.mean(z):.1f}" for z in zero if z),
    ]


def _by_variant(runs: Sequence[StudyRun]) -> dict[str, list[StudyRun]]:
    grouped: dict[str, list[StudyRun]] = {}
    for run in runs:
        grouped.setdefault(run.variant, []).append(run)
    return grouped


def _values(runs: Sequence[StudyRun], phase: str, tasks: str, init: str, key: str) -> list[float]:
    """`key` of the (phase, tasks, init) meta-test row of every run that has it."""
    return [
        float(row[key])
        for run in runs
        for row in run.meta_test["rows"]
        if (row["phase"], row["tasks"], row["init"]) == (phase, tasks, init) and key in row
    ]


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return ""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return f"{len(values) - len(finite)} non-finite of {len(values)}"
    mean, std = mean_std(finite)
    return f"{mean:.4f} ± {std:.4f}"
