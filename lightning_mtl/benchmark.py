"""`lightning-mtl bench`: what the prox costs, as ratios measured in one run.

1. One `ProxAdamW.step()` (adaptive and euclidean group-lasso prox) against one
   `torch.optim.AdamW.step()` on the conv weights of a dilated ResNet.
2. The prox's share of a full training step (forward, backward, optimizer step) of the
   multi-task model (seg + depth + normal DeepLabV3 heads).
3. The NYU-v2 loader's images/s (augmentation on, worker processes) against the images/s a
   training step consumes at the same resolution: is data the bottleneck?
4. Compaction: MACs and latency of the backbone with 0–90 % of its input groups zeroed, dense
   vs compacted, at batch 1 and 8, plotted as latency vs sparsity.

Timings are medians of `torch.utils.benchmark.Timer`; the compared statements alternate so that
machine noise hits them alike. Absolute times are not comparable between runs; ratios are.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.benchmark import Timer

from lightning_mtl.benchmark_compaction import (
    benchmark_compaction,
    latency_plot,
    measure_compaction,
)
from lightning_mtl.models import MultiTaskModel, build_backbone, build_head
from lightning_mtl.sparsity import ProxAdamW


def _median_ms(fn: Callable[[], object], min_run_time: float) -> float:
    return (
        Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3
    )


def _interleaved(fns: dict[str, Callable[[], object]], rounds: int, min_run_time: float) -> dict:
    """Median over `rounds` rounds, each timing every statement once in turn."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_median_ms(fn, min_run_time))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimizer_step(backbone: str, device: torch.device, rounds: int, min_run_time: float) -> dict:
    """ms per step of AdamW and ProxAdamW on the backbone's conv weights with fixed gradients."""
    convs = build_backbone(backbone).conv_layers()
    gen = torch.Generator().manual_seed(0)

    def make(cls: type[torch.optim.Optimizer], **kwargs) -> Callable[[], None]:
        params = [torch.nn.Parameter(conv.weight.detach().clone().to(device)) for _, conv in convs]
        for p in params:
            p.grad = (1e-3 * torch.randn(p.shape, generator=gen)).to(device)
        opt = cls(params, lr=1e-4, eps=1e-6, **kwargs)
        for _ in range(3):
            opt.step()

        def step() -> None:
            opt.step()
            _sync(device)

        return step

    fns = {
        "AdamW": make(torch.optim.AdamW),
        "ProxAdamW adaptive": make(ProxAdamW, lambda_=1e-4),
        "ProxAdamW euclidean": make(ProxAdamW, lambda_=1e-4, prox="euclidean"),
    }
    times = _interleaved(fns, rounds, min_run_time)
    return {"convs": len(convs), "params": sum(c.weight.numel() for _, c in convs), **times}


def training_step_share(
    backbone: str,
    image_size: tuple[int, int],
    batch_size: int,
    head_channels: int,
    device: torch.device,
    rounds: int,
) -> dict:
    """ms of a full seg+depth+normal training step and of the adaptive prox inside it."""
    net = build_backbone(backbone)
    heads = {
        "seg": build_head("dense", net.out_channels, 13, head_channels),
        "depth": build_head("dense", net.out_channels, 1, head_channels),
        "normal": build_head("dense", net.out_channels, 3, head_channels),
    }
    model = MultiTaskModel(net, heads).to(device)
    convs = {id(c.weight) for _, c in net.conv_layers()}
    sparse = [p for p in model.parameters() if id(p) in convs]
    dense = [p for p in model.parameters() if id(p) not in convs]
    opt = ProxAdamW([{"params": sparse, "lambda_": 1e-4}, {"params": dense}], eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, *image_size, generator=gen).to(device)
    targets = {
        k: torch.randn(batch_size, c, *image_size, generator=gen).to(device)
        for k, c in (("seg", 13), ("depth", 1), ("normal", 3))
    }

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        preds = model(images)
        sum(torch.nn.functional.mse_loss(preds[k], targets[k]) for k in preds).backward()
        opt.step()
        _sync(device)

    def prox_only() -> None:
        opt.apply_prox()
        _sync(device)

    train_step()
    times = _interleaved({"training step": train_step, "prox": prox_only}, rounds, 0.0)
    return {**times, "share": times["prox"] / times["training step"]}


def data_throughput(
    image_size: tuple[int, int], batch_size: int, num_workers: int, num_images: int
) -> float:
    """Images/s of the NYU-v2 loader (mtan files, augmentation on) after worker start-up."""
    from datamodules.nyuv2 import NYUv2DataModule, write_synthetic_nyuv2

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "nyuv2"
        write_synthetic_nyuv2(root, "mtan", num_images, max(1, num_images // 4), image_size, 0)
        data = NYUv2DataModule(
            str(root),
            tasks=["seg", "depth", "normal"],
            batch_size=batch_size,
            num_workers=num_workers,
            image_size=image_size,
            augment=True,
        )
        data.setup("fit")
        loader = data.train_dataloader()
        next(iter(loader))  # worker start-up is not throughput
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += batch["image"].shape[0]
        return seen / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lightning-mtl bench", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="prox,data,compaction", help="comma-separated")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square inputs")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--head-channels", type=int, default=256)
    parser.add_argument("--data-size", type=int, nargs=2, default=[288, 384], metavar=("H", "W"))
    parser.add_argument("--data-workers", type=int, default=2)
    parser.add_argument("--data-images", type=int, default=64, help="synthetic NYU-v2 images")
    parser.add_argument("--plot", default="latency_vs_sparsity.png", help="compaction plot path")
    parser.add_argument(
        "--checkpoint", help="a trained checkpoint: also compact its backbone (a trained profile)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    device = torch.device(args.device)
    console = Console()
    result: dict = {}
    if "prox" in parts:
        result.update(_prox_part(args, device, console))
    if "data" in parts:
        result["data"] = _data_part(args, device, console)
    if "compaction" in parts:
        result["compaction"] = _compaction_part(args, device, console)
    return result


def _prox_part(args: argparse.Namespace, device: torch.device, console: Console) -> dict:
    opt = optimizer_step(args.backbone, device, args.rounds, args.min_run_time)
    square = (args.image_size, args.image_size)
    step = training_step_share(
        args.backbone, square, args.batch_size, args.head_channels, device, max(1, args.rounds // 2)
    )
    table = Table(
        title=f"prox cost, dilated {args.backbone}, {device.type}, "
        f"{torch.get_num_threads()} threads",
        caption=f"optimizer steps on the {opt['convs']} convs ({opt['params']:,} weights); "
        f"training step {args.image_size}², batch {args.batch_size}, seg+depth+normal heads",
    )
    table.add_column("measurement")
    table.add_column("ms", justify="right")
    table.add_column("ratio", justify="right")
    for name in ("AdamW", "ProxAdamW adaptive", "ProxAdamW euclidean"):
        table.add_row(f"{name} step", f"{opt[name]:.1f}", f"{opt[name] / opt['AdamW']:.2f}×")
    table.add_row("training step (fwd+bwd+ProxAdamW)", f"{step['training step']:.1f}", "")
    table.add_row("adaptive prox share of it", f"{step['prox']:.1f}", f"{100 * step['share']:.2f}%")
    console.print(table)
    return {"optimizer_step": opt, "training_step": step}


def _data_part(args: argparse.Namespace, device: torch.device, console: Console) -> dict:
    data_size = tuple(args.data_size)
    step = training_step_share(
        args.backbone, data_size, args.batch_size, args.head_channels, device, 1
    )
    train_images_s = args.batch_size / (step["training step"] / 1e3)
    loader_images_s = data_throughput(data_size, 8, args.data_workers, args.data_images)
    table = Table(
        title=f"data pipeline vs training step, {data_size[0]}×{data_size[1]}",
        caption=f"NYU-v2 loader (mtan files, augmentation on, {args.data_workers} workers, "
        f"batch 8) vs a training step at the same size, batch {args.batch_size}",
    )
    table.add_column("measurement")
    table.add_column("images/s", justify="right")
    table.add_row("NYU-v2 loader", f"{loader_images_s:.1f}")
    table.add_row("training step consumes", f"{train_images_s:.2f}")
    table.add_row("loader / training", f"{loader_images_s / train_images_s:.1f}×")
    console.print(table)
    return {"loader_images_s": loader_images_s, "train_images_s": train_images_s}


def _compaction_part(args: argparse.Namespace, device: torch.device, console: Console) -> list:
    depth = int(args.backbone.removeprefix("resnet"))
    min_run_time = args.min_run_time / 5  # per model, round and configuration (10 of them)
    results = benchmark_compaction(
        depth,
        args.image_size,
        rounds=args.rounds,
        min_run_time=min_run_time,
        device=device.type,
    )
    latency_plot(results, args.plot)
    if args.checkpoint:
        from lightning_mtl.modules import MultiTaskLightningModule
        from lightning_mtl.sparsity import sparsity_stats

        module = MultiTaskLightningModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
        backbone = module.model.backbone
        trained = sparsity_stats(backbone).group_pct / 100
        results += measure_compaction(
            backbone,
            args.image_size,
            (1, 8),
            args.rounds,
            min_run_time,
            device.type,
            sparsity=trained,
            profile="trained",
        )
    table = Table(
        title=f"compaction, dilated {args.backbone} backbone, {args.image_size}², {device.type}",
        caption=f"random zeroed input groups; dense/compacted ratios; plot: {args.plot}",
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
    return results
