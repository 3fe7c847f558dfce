"""Inference speed of compaction: MACs and latency of dense vs compacted dilated ResNets."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from lightning_mtl.models import DilatedResNet
from lightning_mtl.sparsity import conv_weights
from lightning_mtl.sparsity.compact import compact

__all__ = [
    "benchmark_compaction",
    "latency_ms",
    "latency_plot",
    "measure_compaction",
    "zero_random_groups",
]

SPARSITIES: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def zero_random_groups(model: nn.Module, fraction: float, generator: torch.Generator) -> None:
    """Zero `round(fraction · I)` random input groups of every grouped conv (see `conv_weights`)."""
    for _, weight in conv_weights(model):
        in_ch = weight.shape[1]
        idx = torch.randperm(in_ch, generator=generator)[: round(fraction * in_ch)]
        weight[:, idx] = 0


def latency_ms(
    models: Mapping[str, nn.Module], x: torch.Tensor, rounds: int = 5, min_run_time: float = 0.2
) -> dict[str, float]:
    """Median inference latency (ms) of each model on `x`, measured in alternating rounds so
    that the machine's drift hits every model alike."""
    times: dict[str, list[float]] = {key: [] for key in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for key, model in models.items():
                timer = benchmark.Timer("model(x)", globals={"model": model, "x": x})
                times[key].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return {key: statistics.median(values) for key, values in times.items()}


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


def latency_plot(results: Sequence[dict[str, float]], path: str | Path) -> None:
    """Latency (ms) vs % sparsity, dense dashed and compacted solid, one colour per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=150)
    plt.close(fig)
