"""`lightning-mtl bench`: what the prox costs, as ratios measured in one run.

1. One `ProxAdamW.step()` (adaptive and euclidean group-lasso prox) against one
   `torch.optim.AdamW.step()` on the conv weights of a dilated ResNet.
2. The prox's share of a full training step (forward, backward, optimizer step) of the
   multi-task model (seg + depth + normal DeepLabV3 heads).

Timings are medians of `torch.utils.benchmark.Timer`; the compared statements alternate so that
machine noise hits them alike. Absolute times are not comparable between runs; ratios are.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.benchmark import Timer

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
    image_size: int,
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
    images = torch.rand(batch_size, 3, image_size, image_size, generator=gen).to(device)
    targets = {
        k: torch.randn(batch_size, c, image_size, image_size, generator=gen).to(device)
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


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lightning-mtl bench", description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--head-channels", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    opt = optimizer_step(args.backbone, device, args.rounds, args.min_run_time)
    step = training_step_share(
        args.backbone,
        args.image_size,
        args.batch_size,
        args.head_channels,
        device,
        max(1, args.rounds // 2),
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
    Console().print(table)
    return {"optimizer_step": opt, "training_step": step}
