"""The prox part: one `ProxAdamW.step()` (adaptive and euclidean group-lasso prox) against one
`torch.optim.AdamW.step()` on the conv weights of a dilated ResNet, and the prox's share of a
full training step (forward, backward, optimizer step) of the seg + depth + normal model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.options import TASKS, BenchOptions
from lightning_mtl.benchmarks.timing import interleaved_ms, sync
from lightning_mtl.models import MultiTaskModel, build_backbone, build_head
from lightning_mtl.sparsity import ProxAdamW


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
            sync(device)

        return step

    fns = {
        "AdamW": make(torch.optim.AdamW),
        "ProxAdamW adaptive": make(ProxAdamW, lambda_=1e-4),
        "ProxAdamW euclidean": make(ProxAdamW, lambda_=1e-4, prox_metric="euclidean"),
    }
    times = interleaved_ms(fns, rounds, min_run_time)
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
    heads = {k: build_head("dense", net.out_channels, c, head_channels) for k, c in TASKS.items()}
    model = MultiTaskModel(net, heads).to(device)
    convs = {id(c.weight) for _, c in net.conv_layers()}
    sparse = [p for p in model.parameters() if id(p) in convs]
    dense = [p for p in model.parameters() if id(p) not in convs]
    opt = ProxAdamW([{"params": sparse, "lambda_": 1e-4}, {"params": dense}], eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, *image_size, generator=gen).to(device)
    targets = {
        k: torch.randn(batch_size, c, *image_size, generator=gen).to(device)
        for k, c in TASKS.items()
    }

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        preds = model(images)
        sum(torch.nn.functional.mse_loss(preds[k], targets[k]) for k in preds).backward()
        opt.step()
        sync(device)

    def prox_only() -> None:
        opt.apply_prox()
        sync(device)

    train_step()
    times = interleaved_ms({"training step": train_step, "prox": prox_only}, rounds, 0.0)
    return {**times, "share": times["prox"] / times["training step"]}


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Time both, print the table; `{"optimizer_step": ..., "training_step": ...}`."""
    opt = optimizer_step(options.backbone, device, options.rounds, options.min_run_time)
    square = (options.image_size, options.image_size)
    rounds = max(1, options.rounds // 2)
    step = training_step_share(
        options.backbone, square, options.batch_size, options.head_channels, device, rounds
    )
    table = Table(
        title=f"prox cost, dilated {options.backbone}, {device.type}, "
        f"{torch.get_num_threads()} threads",
        caption=f"optimizer steps on the {opt['convs']} convs ({opt['params']:,} weights); "
        f"training step {options.image_size}², batch {options.batch_size}, "
        "seg+depth+normal heads",
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
