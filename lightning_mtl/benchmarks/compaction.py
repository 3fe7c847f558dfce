"""The compaction part: MACs and latency of the backbone with 0–90 % of its input groups
zeroed, dense vs compacted with every dead channel removed (`round_to=None`) and with widths
rounded to multiples of `round_to`, at batch 1 and 8, plotted as latency vs sparsity. Its
figures: the latency speed-up over the MACs ratio at 70 % random sparsity and for a trained
profile, and the MACs that rounding keeps."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_mtl.benchmarks.options import BenchOptions
from lightning_mtl.benchmarks.timing import latency_ms
from lightning_mtl.models import DilatedResNet
from lightning_mtl.reporting.figures import latency_plot, save_figure
from lightning_mtl.sparsity import conv_weights
from lightning_mtl.sparsity.compact import compact

SPARSITIES: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)
#: the random sparsity of the `compaction_latency_vs_macs_random` figures
FIGURE_SPARSITY = 0.7


@torch.no_grad()
def zero_random_groups(model: nn.Module, fraction: float, generator: torch.Generator) -> None:
    """Zero `round(fraction · I)` random input groups of every grouped conv (see `conv_weights`)."""
    for _, weight in conv_weights(model):
        in_ch = weight.shape[1]
        idx = torch.randperm(in_ch, generator=generator)[: round(fraction * in_ch)]
        weight[:, idx] = 0


def benchmark_compaction(
    depth: int = 50,
    image_size: int = 256,
    sparsities: Sequence[float] = SPARSITIES,
    batch_sizes: Sequence[int] = (1, 8),
    rounds: int = 5,
    min_run_time: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    round_to: int = 8,
    **backbone_options: Any,
) -> list[dict[str, float]]:
    """Per sparsity and batch size: params, MACs and latency of a dense vs compacted backbone.

    The dense model is a random-init `DilatedResNet(depth, **backbone_options)` with the given
    fraction of input groups of every conv zeroed (seeded); the compacted ones are copies after
    `compact` without and with `round_to`. All run in eval mode on `device`; each latency is the
    median over `rounds` interleaved measurements of at least `min_run_time` seconds.
    """
    results = []
    for sparsity in sparsities:
        torch.manual_seed(seed)
        dense = DilatedResNet(depth, **backbone_options).eval()
        zero_random_groups(dense, sparsity, torch.Generator().manual_seed(seed))
        results += measure_compaction(
            dense,
            image_size,
            batch_sizes,
            rounds,
            min_run_time,
            device,
            round_to,
            sparsity=sparsity,
        )
    return results


def measure_compaction(
    dense: nn.Module,
    image_size: int,
    batch_sizes: Sequence[int],
    rounds: int,
    min_run_time: float,
    device: str = "cpu",
    round_to: int = 8,
    **labels: Any,
) -> list[dict[str, Any]]:
    """Params, MACs and latency of `dense` (its own zero pattern, e.g. a trained backbone) and
    of two compacted copies, exact (`round_to=None`) and rounded (`round_to`), one row per batch
    size, with `labels` added to every row. Ratios are dense / compacted; `_rounded` keys are
    the rounded copy's."""
    dense = dense.eval()
    example = torch.rand(1, 3, image_size, image_size)
    models, reports = {"dense": dense}, {}
    for key, rounding in (("compacted", None), ("rounded", round_to)):
        models[key] = copy.deepcopy(dense)
        reports[key] = compact(models[key], example, round_to=rounding)
    models = {key: model.to(device) for key, model in models.items()}
    exact, rounded = reports["compacted"], reports["rounded"]
    rows = []
    for batch in batch_sizes:
        x = torch.rand(batch, 3, image_size, image_size, device=device)
        ms = latency_ms(models, x, rounds, min_run_time)
        rows.append(
            {
                **labels,
                "batch_size": batch,
                "round_to": round_to,
                "params_dense": exact.params_before,
                "params_compacted": exact.params_after,
                "params_rounded": rounded.params_after,
                "macs_ratio": exact.macs_before / exact.macs_after,
                "macs_ratio_rounded": rounded.macs_before / rounded.macs_after,
                "latency_dense_ms": ms["dense"],
                "latency_compacted_ms": ms["compacted"],
                "latency_rounded_ms": ms["rounded"],
                "latency_ratio": ms["dense"] / ms["compacted"],
                "latency_ratio_rounded": ms["dense"] / ms["rounded"],
            }
        )
    return rows


def figures(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The part's figures, one key each: per batch size, the latency speed-up over the MACs
    ratio (exact and rounded) at `FIGURE_SPARSITY` random and for the trained profile, and the
    MACs rounding keeps (rounded / exact compacted MACs)."""
    out: dict[str, dict[str, float]] = {}
    for profile in ("random", "trained"):
        rows = [
            r
            for r in results
            if r.get("profile", "random") == profile
            and (profile == "trained" or r["sparsity"] == FIGURE_SPARSITY)
        ]
        for r in rows:
            batch, suffix = f"batch_{r['batch_size']}", f"_round{r['round_to']}"
            key = f"compaction_latency_vs_macs_{profile}"
            out.setdefault(key, {})[batch] = r["latency_ratio"] / r["macs_ratio"]
            rounded = r["latency_ratio_rounded"] / r["macs_ratio_rounded"]
            out.setdefault(key + suffix, {})[batch] = rounded
            cost = r["macs_ratio"] / r["macs_ratio_rounded"]
            out.setdefault(f"compaction_macs_cost{suffix}_{profile}", {})[batch] = cost
    return out


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Measure every sparsity (and the `checkpoint`'s trained profile), write the plot, print
    the table; `{"compaction": rows of measure_compaction, **figures(rows)}`."""
    depth = int(options.backbone.removeprefix("resnet"))
    min_run_time = options.min_run_time / 5  # per model, round and configuration (15 of them)
    results = benchmark_compaction(
        depth,
        options.image_size,
        rounds=options.rounds,
        min_run_time=min_run_time,
        device=device.type,
        round_to=options.compaction_round_to,
    )
    save_figure(latency_plot(results), options.plot, dpi=150)
    if options.checkpoint:
        from lightning_mtl.modules import MultiTaskLightningModule
        from lightning_mtl.sparsity import sparsity_stats

        module = MultiTaskLightningModule.load_from_checkpoint(
            options.checkpoint, map_location="cpu"
        )
        backbone = module.model.backbone
        trained = sparsity_stats(backbone).group_pct / 100
        results += measure_compaction(
            backbone,
            options.image_size,
            (1, 8),
            options.rounds,
            min_run_time,
            device.type,
            options.compaction_round_to,
            sparsity=trained,
            profile="trained",
        )
    r8 = f"round_to {options.compaction_round_to}"
    table = Table(
        title=f"compaction, dilated {options.backbone} backbone, {options.image_size}², "
        f"{device.type}",
        caption=f"random zeroed input groups; dense/compacted ratios, exact / {r8}; plot: "
        f"{options.plot}",
    )
    columns = ("% zero groups", "batch", "params", "MACs ratio", "latency ratio", "latency/MACs")
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            f"{100 * r['sparsity']:.0f}" + (" (trained)" if r.get("profile") else ""),
            str(r["batch_size"]),
            f"{r['params_dense'] / 1e6:.2f}M → {r['params_compacted'] / 1e6:.2f}M / "
            f"{r['params_rounded'] / 1e6:.2f}M",
            f"{r['macs_ratio']:.2f}× / {r['macs_ratio_rounded']:.2f}×",
            f"{r['latency_ratio']:.2f}× / {r['latency_ratio_rounded']:.2f}×",
            f"{r['latency_ratio'] / r['macs_ratio']:.2f} / "
            f"{r['latency_ratio_rounded'] / r['macs_ratio_rounded']:.2f}",
        )
    console.print(table)
    return {"compaction": results, **figures(results)}
