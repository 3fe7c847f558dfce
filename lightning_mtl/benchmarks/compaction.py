"""The compaction part: MACs and latency of the backbone with 0–90 % of its input groups
zeroed, dense vs compacted, at batch 1 and 8, plotted as latency vs sparsity."""

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
    **backbone_options: Any,
) -> list[dict[str, float]]:
    """Per sparsity and batch size: params, MACs and latency of a dense vs compacted backbone.

    The dense model is a random-init `DilatedResNet(depth, **backbone_options)` with the given
    fraction of input groups of every conv zeroed (seeded); the compacted one is a copy after
    `compact`. Both run in eval mode on `device`; each latency is the median over `rounds`
    alternating dense/compacted measurements of at least `min_run_time` seconds.
    """
    results = []
    for sparsity in sparsities:
        torch.manual_seed(seed)
        dense = DilatedResNet(depth, **backbone_options).eval()
        zero_random_groups(dense, sparsity, torch.Generator().manual_seed(seed))
        results += measure_compaction(
            dense, image_size, batch_sizes, rounds, min_run_time, device, sparsity=sparsity
        )
    return results


def measure_compaction(
    dense: nn.Module,
    image_size: int,
    batch_sizes: Sequence[int],
    rounds: int,
    min_run_time: float,
    device: str = "cpu",
    **labels: Any,
) -> list[dict[str, Any]]:
    """Params, MACs and latency of `dense` (its own zero pattern, e.g. a trained backbone) and
    of a compacted copy, one row per batch size, with `labels` added to every row."""
    dense = dense.eval()
    compacted = copy.deepcopy(dense)
    report = compact(compacted, torch.rand(1, 3, image_size, image_size))
    dense, compacted = dense.to(device), compacted.to(device)
    rows = []
    for batch in batch_sizes:
        x = torch.rand(batch, 3, image_size, image_size, device=device)
        ms = latency_ms({"dense": dense, "compacted": compacted}, x, rounds, min_run_time)
        dense_ms, compact_ms = ms["dense"], ms["compacted"]
        rows.append(
            {
                **labels,
                "batch_size": batch,
                "params_dense": report.params_before,
                "params_compacted": report.params_after,
                "macs_ratio": report.macs_before / report.macs_after,
                "latency_dense_ms": dense_ms,
                "latency_compacted_ms": compact_ms,
                "latency_ratio": dense_ms / compact_ms,
            }
        )
    return rows


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Measure every sparsity (and the `checkpoint`'s trained profile), write the plot, print
    the table; `{"compaction": rows of measure_compaction}`."""
    depth = int(options.backbone.removeprefix("resnet"))
    min_run_time = options.min_run_time / 5  # per model, round and configuration (10 of them)
    results = benchmark_compaction(
        depth,
        options.image_size,
        rounds=options.rounds,
        min_run_time=min_run_time,
        device=device.type,
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
            sparsity=trained,
            profile="trained",
        )
    table = Table(
        title=f"compaction, dilated {options.backbone} backbone, {options.image_size}², "
        f"{device.type}",
        caption=f"random zeroed input groups; dense/compacted ratios; plot: {options.plot}",
    )
    for column in ("% zero groups", "batch", "params", "MACs ratio", "latency ratio"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            f"{100 * r['sparsity']:.0f}" + (" (trained)" if r.get("profile") else ""),
            str(r["batch_size"]),
            f"{r['params_dense']:,} → {r['params_compacted']:,}",
            f"{r['macs_ratio']:.2f}×",
            f"{r['latency_ratio']:.2f}×",
        )
    console.print(table)
    return {"compaction": results}
