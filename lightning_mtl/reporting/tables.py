"""The papers' tables: per dataset, task combination, penalty and λ, the mean ± std over seeds
of every task metric, % group and % parameter sparsity, and Δm against single-task runs."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning_mtl.reporting.logs import RunLog
from lightning_mtl.tables import markdown_table, write_csv

SPARSITY_KEYS: tuple[str, ...] = ("sparsity/group_pct", "sparsity/param_pct")


def delta_m(
    metrics: Mapping[str, float], reference: Mapping[str, float], higher: Mapping[str, bool]
) -> float:
    """Δm (%): the mean over tasks of the relative change against `reference`, signed so that
    positive is better (Maninis et al. 2019)."""
    changes = [
        (1 if higher[t] else -1) * (metrics[t] - reference[t]) / reference[t] for t in metrics
    ]
    return 100.0 * statistics.mean(changes)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Row:
    """One table row: the runs of one setting (dataset, tasks, penalty, λ) over seeds."""

    dataset: str
    tasks: str
    penalty: str
    lambda_: float | None
    runs: list[RunLog]
    delta_m: float | None = None

    @property
    def seeds(self) -> list[int]:
        return sorted(r.fields["seed"] for r in self.runs)

    def metric_keys(self) -> list[str]:
        """The split's task metrics, each task's main metric first."""
        keys: list[str] = []
        for task in self.runs[0].tasks:
            main = self.runs[0].main_metrics[task]
            of_task = sorted({k for r in self.runs for k in r.metrics if k.split("/")[1] == task})
            keys += sorted(of_task, key=lambda k: k.split("/")[-1] != main)
        return keys

    def values(self, key: str) -> list[float]:
        if key in SPARSITY_KEYS:
            return [r.at_best(key) for r in self.runs]
        return [r.metrics[key] for r in self.runs]

    def main(self, task: str) -> tuple[str, bool]:
        """The split key of `task`'s main metric and whether higher is better."""
        run = self.runs[0]
        metric = run.main_metrics[task]
        split = next(iter(run.metrics)).split("/")[0]
        return f"{split}/{task}/{metric}", run.higher_is_better[task][metric]


def table_rows(runs: Iterable[RunLog]) -> tuple[list[Row], list[str]]:
    """Runs grouped by setting, sorted (dataset, number of tasks, tasks, penalty, λ), with Δm
    against the λ = 0 single-task rows of the same dataset; and a note per row whose Δm is
    missing for lack of a single-task reference."""
    groups: dict[tuple, Row] = {}
    for run in runs:
        f = run.fields
        key = (f["dataset"], f["tasks"], f["penalty"], f["lambda"])
        groups.setdefault(key, Row(*key, runs=[])).runs.append(run)
    rows = sorted(
        groups.values(),
        key=lambda r: (r.dataset, len(r.runs[0].tasks), r.tasks, r.penalty, r.lambda_ or 0.0),
    )
    references = {
        (r.dataset, r.tasks): r for r in rows if r.lambda_ == 0 and len(r.runs[0].tasks) == 1
    }
    notes = []
    for row in rows:
        tasks = row.runs[0].tasks
        missing = [t for t in tasks if (row.dataset, t) not in references]
        if missing:
            notes.append(
                f"{row.dataset} {row.tasks} λ={format_lambda(row.lambda_)}: no Δm (no "
                f"λ = 0 single-task runs of {missing})"
            )
            continue
        mains = {t: row.main(t) for t in tasks}
        row.delta_m = delta_m(
            {t: mean_std(row.values(k))[0] for t, (k, _) in mains.items()},
            {t: mean_std(references[row.dataset, t].values(k))[0] for t, (k, _) in mains.items()},
            {t: higher for t, (_, higher) in mains.items()},
        )
    return rows, notes


def write_tables(rows: Sequence[Row], out: Path) -> tuple[Path, Path]:
    """`table.csv` (every metric, one line per row) and `table.md` (one table per dataset and
    task combination, rows by penalty and λ: see `markdown`)."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for row in rows:
        record = {
            "dataset": row.dataset,
            "tasks": row.tasks,
            "penalty": row.penalty,
            "lambda": row.lambda_,
            "seeds": len(row.runs),
        }
        for key in [*row.metric_keys(), *SPARSITY_KEYS]:
            record[key], record[f"{key} std"] = mean_std(row.values(key))
        record["delta_m_pct"] = row.delta_m
        records.append(record)
    csv_path = write_csv(records, out / "table.csv")
    md_path = out / "table.md"
    md_path.write_text(markdown(rows))
    return md_path, csv_path


def markdown(rows: Sequence[Row]) -> str:
    """One Markdown table per dataset and task combination: each task's main metric (every
    metric is in the CSV), the sparsity and Δm."""
    lines = []
    for dataset, tasks in dict.fromkeys((r.dataset, r.tasks) for r in rows):
        group = [r for r in rows if (r.dataset, r.tasks) == (dataset, tasks)]
        keys = [group[0].main(t)[0] for t in group[0].runs[0].tasks]
        header = ["penalty", "λ", "seeds", *keys, "% group sparsity", "% param sparsity", "Δm %"]
        body = []
        for row in group:
            cells = [row.penalty, format_lambda(row.lambda_), str(len(row.runs))]
            for key in [*keys, *SPARSITY_KEYS]:
                mean, std = mean_std(row.values(key))
                digits = 2 if key in SPARSITY_KEYS else 4
                cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
            cells.append("–" if row.delta_m is None else f"{row.delta_m:+.2f}")
            body.append(cells)
        table = markdown_table(header, body, align="-" + "r" * (len(header) - 1))
        lines += [f"### {dataset}: {tasks}", "", table, ""]
    return "\n".join(lines)


def format_lambda(value: float | None) -> str:
    """λ as the tables and figures print it (`learned` for meta-sparsity runs)."""
    return "learned" if value is None else f"{value:g}"
