"""`lightning-mtl report RUNS`: a folder of runs → the papers' tables (Markdown, CSV) and
figures (PNG), from the CSV logs and checkpoints alone (no network)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure

from lightning_mtl.reporting import figures
from lightning_mtl.reporting.logs import RunLog, read_runs
from lightning_mtl.reporting.tables import Row, format_lambda, markdown, table_rows, write_tables

#: the per-dataset figures drawn from the table rows alone, by file-name suffix
_PLOTS: dict[str, Callable[[Sequence[Row], str], Figure]] = {
    "metric_vs_lambda": figures.metric_vs_lambda,
    "sparsity_vs_lambda": figures.sparsity_vs_lambda,
    "sparsification": figures.sparsification_over_epochs,
    "layers": figures.layer_profiles,
}


@dataclass
class Report:
    """What `report` wrote and what it left out (folder name → reason)."""

    out: Path
    rows: list[Row]
    left_out: dict[str, str]
    notes: list[str]
    figures: list[Path] = field(default_factory=list)


def report(
    root: Path,
    out: Path | None = None,
    split: str = "test",
    spy: bool = True,
    latency_rounds: int = 0,
    latency_size: tuple[int, int] | None = None,
) -> Report:
    """Tables and figures of the runs under `root`, written to `out` (default `root/report`).

    `split`: the metrics of the `test` split (the best checkpoint's) or of the best `val`
    epoch. `spy`: a group spy plot per setting from its first seed's best checkpoint.
    `latency_rounds` > 0: compact each group-lasso setting's first-seed model (the same
    checkpoint, loaded once) and time it against the dense model (batch 1, alternating rounds;
    input `latency_size` or the run's) for the latency figure.
    """
    out = out or root / "report"
    runs, left_out = read_runs(root, split)
    if out.resolve().parent == root.resolve():
        left_out.pop(out.name, None)  # the previous report, not a run
    if not runs:
        raise ValueError(
            f"no complete run under {root}"
            + "".join(f"\n  {name}: {why}" for name, why in left_out.items())
        )
    rows, notes = table_rows(runs)
    result = Report(out, rows, left_out, notes)
    write_tables(rows, out)
    for dataset in dict.fromkeys(r.dataset for r in rows):
        of_dataset = [r for r in rows if r.dataset == dataset]
        for name, plot in _PLOTS.items():
            result.figures.append(_save(plot(of_dataset, dataset), out / f"{dataset}_{name}.png"))
        points: dict[str, list[tuple[float, float, float]]] = {}
        for row in of_dataset if spy or latency_rounds > 0 else []:
            run, module = _load(row)
            if module is None:
                continue
            if spy:
                result.figures.append(_spy_plot(row, run, module, out / "spy"))
            size = latency_size or run.image_size
            timed = row.lambda_ is not None and row.penalty == "group_lasso" and size
            if latency_rounds > 0 and timed:
                point = _latency_point(run, module, latency_rounds, size)
                points.setdefault(row.tasks, []).append(point)
        if latency_rounds > 0:
            fig = figures.latency_vs_sparsity(points)
            result.figures.append(_save(fig, out / f"{dataset}_latency.png"))
    (out / "report.md").write_text(_index(result, root, split))
    return result


def _save(fig: Figure, path: Path) -> Path:
    return figures.save_figure(fig, path, dpi=110, tight=True)


def _load(row: Row):
    """The first seed's module from its best checkpoint (None when no checkpoint was kept)."""
    from lightning_mtl.modules import MultiTaskLightningModule

    run = min(row.runs, key=lambda r: r.fields["seed"])
    if run.checkpoint is None:
        return run, None
    return run, MultiTaskLightningModule.load_from_checkpoint(run.checkpoint, map_location="cpu")


def _spy_plot(row: Row, run: RunLog, module, out: Path) -> Path:
    title = f"{row.dataset} {row.tasks} λ={format_lambda(row.lambda_)} seed {run.fields['seed']}"
    fig = figures.spy_plot(
        module.sparse_weights(original_shapes=True), module.sparsity.group_by, title=title
    )
    return _save(fig, out / f"{run.folder.name}.png")


def _latency_point(
    run: RunLog, module, rounds: int, size: tuple[int, int]
) -> tuple[float, float, float]:
    """(group sparsity %, latency speed-up, MACs reduction) of the compacted against the dense
    model, batch 1 at `size`, timed in alternating rounds."""
    import copy

    from lightning_mtl.benchmarks.timing import latency_ms
    from lightning_mtl.sparsity import compact

    dense = module.model.eval()
    example = torch.rand(1, 3, *size)
    compacted = copy.deepcopy(dense)
    macs = compact(compacted, example)
    times = latency_ms({"dense": dense, "compacted": compacted}, example, rounds=rounds)
    return (
        run.at_best("sparsity/group_pct"),
        times["dense"] / times["compacted"],
        macs.macs_before / macs.macs_after,
    )


def _index(result: Report, root: Path, split: str) -> str:
    """`report.md`: how it was made, what was left out, the tables, the figures."""
    lines = [
        f"# Report: {root}",
        "",
        f"{sum(len(r.runs) for r in result.rows)} runs in {len(result.rows)} settings; "
        f"metrics of the {split} split "
        + ("(best checkpoint by val/loss)" if split == "test" else "(best val/loss epoch)")
        + "; sparsity of the grouped convs at that epoch; mean ± std over seeds; Δm (%) of "
        "the main metrics against the λ = 0 single-task runs (positive = better).",
        "",
    ]
    if result.left_out:
        lines += ["## Left out", ""]
        lines += [f"- `{name}`: {why}" for name, why in result.left_out.items()]
        lines.append("")
    if result.notes:
        lines += ["## Notes", "", *[f"- {note}" for note in result.notes], ""]
    lines += ["## Tables", "", markdown(result.rows), "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(result.out)})" for p in result.figures]
    return "\n".join(lines) + "\n"
