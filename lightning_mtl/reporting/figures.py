"""The papers' figures from the table rows: metric vs λ and sparsity vs λ (Fig. 3a/b), the
sparsification profile over epochs per λ (Fig. 3c), per-layer live fractions and group spy
plots (Fig. 3), latency vs sparsity (Fig. 3d). Each returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lightning_mtl.reporting.tables import Row, format_lambda, mean_std


def _series(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows with a fixed λ by (tasks, penalty), each sorted by λ."""
    series: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.lambda_ is not None:
            series.setdefault((row.tasks, row.penalty), []).append(row)
    return {k: sorted(v, key=lambda r: r.lambda_) for k, v in series.items()}


def _panels(count: int, width: float, height: float, **kwargs) -> tuple[Figure, list[Axes]]:
    """`count` panels, at most four per row; unused grid cells are hidden."""
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kwargs
    )
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _label(tasks: str, penalty: str) -> str:
    return tasks if penalty == "group_lasso" else f"{tasks} ({penalty})"


def _lambda_axis(ax: Axes, rows: Sequence[Row]) -> None:
    """Symmetric-log λ axis, so λ = 0 (dense) sits at the left of the log-spaced grid."""
    positive = [r.lambda_ for r in rows if r.lambda_]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.set_xlabel("λ")
    ax.grid(alpha=0.3)


def metric_vs_lambda(rows: Sequence[Row], title: str = "") -> Figure:
    """Each task's main metric (mean ± std over seeds) against λ, one line per combination
    that has the task."""
    tasks = list(dict.fromkeys(t for r in rows for t in r.runs[0].tasks))
    fig, axes = _panels(len(tasks), 4.2, 3.4)
    for ax, task in zip(axes, tasks, strict=True):
        plotted = []
        for (combo, penalty), series in _series(rows).items():
            if task not in series[0].runs[0].tasks:
                continue
            key, higher = series[0].main(task)
            stats = np.array([mean_std(r.values(key)) for r in series])
            lams = [r.lambda_ for r in series]
            ax.errorbar(
                lams,
                stats[:, 0],
                yerr=stats[:, 1],
                marker="o",
                capsize=3,
                label=_label(combo, penalty),
            )
            plotted += series
            ax.set_ylabel(f"{key.split('/', 1)[1]} ({'↑' if higher else '↓'})")
        _lambda_axis(ax, plotted)
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.suptitle(title or "task metric vs λ")
    fig.tight_layout()
    return fig


def sparsity_vs_lambda(rows: Sequence[Row], title: str = "") -> Figure:
    """% group and % parameter sparsity of the grouped convs against λ, per combination."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key in zip(axes, ("sparsity/group_pct", "sparsity/param_pct"), strict=True):
        for (combo, penalty), series in _series(rows).items():
            stats = np.array([mean_std(r.values(key)) for r in series])
            ax.errorbar(
                [r.lambda_ for r in series],
                stats[:, 0],
                yerr=stats[:, 1],
                marker="o",
                capsize=3,
                label=_label(combo, penalty),
            )
        _lambda_axis(ax, rows)
        ax.set_ylim(-2, 102)
        ax.set_ylabel(f"% {key.split('/')[1].removesuffix('_pct')} sparsity")
        ax.legend(fontsize=7)
    fig.suptitle(title or "sparsity vs λ")
    fig.tight_layout()
    return fig


def sparsification_over_epochs(rows: Sequence[Row], title: str = "") -> Figure:
    """% group sparsity per validation epoch (mean over seeds), one panel per combination and
    one line per λ."""
    series = _series(rows)
    fig, axes = _panels(len(series), 4.2, 3.2, sharey=True)
    for ax, ((combo, penalty), group) in zip(axes, series.items(), strict=True):
        for row in group:
            epochs = sorted(set.intersection(*(set(r.epochs) for r in row.runs)))
            values = [
                np.mean([r.epochs[e].get("sparsity/group_pct", np.nan) for r in row.runs])
                for e in epochs
            ]
            ax.plot(epochs, values, marker=".", label=f"λ={format_lambda(row.lambda_)}")
        ax.set_title(_label(combo, penalty))
        ax.set_xlabel("epoch")
        ax.set_ylabel("% group sparsity")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "sparsification over training")
    fig.tight_layout()
    return fig


def layer_profiles(rows: Sequence[Row], title: str = "") -> Figure:
    """Live-group fraction of every grouped conv (rows, forward order) per λ (columns), mean
    over seeds at the best epoch; one panel per combination."""
    series = _series(rows)
    layers = list(series and next(iter(series.values()))[0].runs[0].layer_fractions())
    widest = max(len(g) for g in series.values())
    fig, axes = _panels(len(series), 1.0 + 0.45 * widest, 1.2 + 0.13 * len(layers), sharey=True)
    image = None
    for ax, ((combo, penalty), group) in zip(axes, series.items(), strict=True):
        grid = np.array(
            [
                [np.mean([r.layer_fractions()[name] for r in row.runs]) for row in group]
                for name in layers
            ]
        )
        image = ax.imshow(
            grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest"
        )
        ticks = [format_lambda(r.lambda_) for r in group]
        ax.set_xticks(range(len(group)), ticks, rotation=60, fontsize=7)
        ax.set_yticks(range(len(layers)), layers, fontsize=6)
        ax.set_xlabel("λ")
        ax.set_title(_label(combo, penalty), fontsize=9)
    fig.suptitle(title or "live channel groups per layer")
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes, label="live fraction", fraction=0.02)
    return fig


def latency_vs_sparsity(points: Mapping[str, Sequence[tuple[float, float, float]]]) -> Figure:
    """Per combination, (group sparsity %, latency speed-up, MACs reduction) points of the
    compacted against the dense model: measured speed-up (solid) next to the MACs ratio
    (dashed), the ceiling compaction could reach."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, values in points.items():
        values = sorted(values)
        x = [v[0] for v in values]
        line = ax.plot(x, [v[1] for v in values], marker="o", label=f"{label} latency")[0]
        ax.plot(
            x,
            [v[2] for v in values],
            ls="--",
            color=line.get_color(),
            alpha=0.6,
            label=f"{label} MACs",
        )
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xlabel("% group sparsity")
    ax.set_ylabel("dense / compacted (batch 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("compaction speed-up vs sparsity")
    fig.tight_layout()
    return fig
