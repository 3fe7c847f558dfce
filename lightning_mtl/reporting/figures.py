"""Every figure of the project, each returned as a matplotlib Figure (`save_figure` writes one).

From the report's table rows: metric vs λ and sparsity vs λ (Fig. 3a/b), the sparsification
profile over epochs per λ (Fig. 3c), per-layer live fractions (Fig. 3) and speed-up vs
sparsity (Fig. 3d). From weights and measurements: the group spy plot (`spy_plot`), a LOMT
task profile (`profile_spy_plot`), the compaction benchmark's latency (`latency_plot`) and the
validation samples (`samples_plot`). The non-interactive backend is selected here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lightning_mtl.reporting.tables import Row, format_lambda, mean_std
from lightning_mtl.sparsity.groups import NamedWeights, live_groups


def save_figure(fig: Figure, path: str | Path, *, dpi: int, tight: bool = False) -> Path:
    """Write `fig` to `path` (folders made as needed) and close it; `tight`: crop to content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)
    return path


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


def lambda_curves(
    curves: Mapping[str, Sequence[tuple[int, Sequence[int], Sequence[float]]]],
) -> Figure:
    """λ over the outer steps of meta-sparsity runs: one panel per variant, one line per seed
    (`curves`: variant → [(seed, steps, λ values)]), log scale, λ's start dotted."""
    fig, axes = _panels(len(curves), 4.2, 3.2, sharey=True)
    for ax, (variant, runs) in zip(axes, curves.items(), strict=True):
        for seed, steps, lambdas in runs:
            ax.plot(steps, lambdas, label=f"seed {seed}")
        ax.axhline(runs[0][2][0], color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(variant)
        ax.set_xlabel("outer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("λ")
    return fig


def spy_plot(weights: NamedWeights, group_by: str = "in_channel", title: str = "") -> Figure:
    """Live (dark) and zero (white) channel groups of every conv, one row per layer.

    Rows are the convs in forward order; each row's groups are stretched to the widest layer so
    all layers share the x axis (group index / number of groups). The right panel gives each
    layer's fraction of live groups.
    """
    masks = [live_groups(w, group_by).cpu().numpy() for _, w in weights]
    width = max(m.size for m in masks)
    image = np.stack([m[(np.arange(width) * m.size) // width] for m in masks]).astype(float)
    fractions = [m.mean() for m in masks]
    height = max(3.0, 0.12 * len(masks) + 1.0)
    fig, (ax, bar) = plt.subplots(
        1, 2, figsize=(10, height), gridspec_kw={"width_ratios": [5, 1]}, sharey=True
    )
    ax.imshow(image, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(weights)), [name for name, _ in weights], fontsize=6)
    ax.set_xticks([0, width - 1], ["first", "last"])
    ax.set_xlabel(f"{group_by.replace('_', ' ')} group (stretched per layer)")
    ax.set_title(title or "live channel groups (dark)")
    bar.barh(range(len(fractions)), fractions, color="0.3")
    bar.set_xlim(0, 1)
    bar.set_xlabel("live fraction")
    fig.tight_layout()
    return fig


def profile_spy_plot(
    task: str,
    layers: Sequence[str],
    seeds: Mapping[int, Sequence[float]],
    active: Sequence[bool],
    threshold: float,
    tap: str | None = None,
) -> Figure:
    """Spy plot of one task's LOMT profile (`lightning_mtl.lomt.profile_plot` checks and calls
    it): one row per conv (forward order, top down), one column per seed, grey level = live
    fraction (black = all groups live).

    Inactive convs have red names and a red cross in the right-hand column of per-conv minimum
    live fraction (the dashed line is the threshold); the tap, when given, is boxed in blue and
    named in the title.
    """
    image = np.array(list(seeds.values())).T  # layers × seeds
    n_layers, n_seeds = image.shape
    height = max(3.0, 0.14 * n_layers + 1.2)
    fig, (ax, bar) = plt.subplots(
        1,
        2,
        figsize=(3.5 + 0.4 * n_seeds, height),
        gridspec_kw={"width_ratios": [max(n_seeds, 2), 2]},
        sharey=True,
    )
    ax.imshow(image, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(n_layers), layers, fontsize=6)
    for label, is_active in zip(ax.get_yticklabels(), active, strict=True):
        label.set_color("black" if is_active else "red")
    ax.set_xticks(range(n_seeds), [str(seed) for seed in seeds], fontsize=7)
    ax.set_xlabel("seed")
    minimum = image.min(axis=1)
    bar.barh(range(n_layers), minimum, color=["0.3" if a else "red" for a in active])
    inactive_rows = [i for i, is_active in enumerate(active) if not is_active]
    bar.plot([0.0] * len(inactive_rows), inactive_rows, "x", color="red", markersize=4)
    bar.axvline(threshold, color="red", linestyle="--", linewidth=0.8)
    bar.set_xlim(0, 1)
    bar.set_xlabel("min live fraction")
    title = f"{task}: live input groups"
    if tap is not None:
        row = list(layers).index(tap)
        ax.add_patch(
            Rectangle((-0.5, row - 0.5), n_seeds, 1, fill=False, edgecolor="tab:blue", linewidth=2)
        )
        ax.get_yticklabels()[row].set_fontweight("bold")
        title += f" (tap {tap})"
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def latency_plot(results: Sequence[Mapping[str, float]]) -> Figure:
    """The compaction benchmark's rows: latency (ms) vs % sparsity, dense dashed and compacted
    solid, one colour per batch size."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, batch in enumerate(sorted({r["batch_size"] for r in results})):
        rows = sorted((r for r in results if r["batch_size"] == batch), key=lambda r: r["sparsity"])
        pct = [100 * r["sparsity"] for r in rows]
        for kind, style in (("dense", "--o"), ("compacted", "-o")):
            latencies = [r[f"latency_{kind}_ms"] for r in rows]
            ax.plot(pct, latencies, style, color=f"C{i}", label=f"{kind}, batch {batch}")
    ax.set_xlabel("% zero input groups")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def samples_plot(columns: Sequence[tuple[str, Sequence[torch.Tensor]]]) -> Figure:
    """A grid of [3, H, W] pictures in [0, 1]: one titled column per (title, pictures), one row
    per sample (every column holds one picture per sample)."""
    rows = len(columns[0][1])
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), squeeze=False
    )
    for col, (title, column) in enumerate(columns):
        axes[0, col].set_title(title, fontsize=7)
        for row, picture in enumerate(column):
            axes[row, col].imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
            axes[row, col].axis("off")
    fig.tight_layout()
    return fig
