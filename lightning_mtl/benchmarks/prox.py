"""The prox part: one `ProxAdamW.step()` (adaptive group lasso at two λ, euclidean, λ = 0;
eager and with the compiled kernel) against one torch `AdamW(fused=True).step()` with the same
hyperparameters on the conv weights of a dilated ResNet, with torch's default AdamW for
reference, and the prox's share of a full training step (forward, backward, optimizer step)
of the seg + depth + normal model.

Its figures (`--json`): `prox_{case}_vs_adamw_fused` per case (the compiled kernel on CPU, the
eager path elsewhere), `prox_eager_{case}_vs_adamw_fused`, `prox_adaptive_vs_adamw_fused` (the
larger of the two adaptive ones), `adamw_default_vs_adamw_fused` and
`prox_share_of_training_step`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.options import TASKS, BenchOptions
from lightning_mtl.benchmarks.timing import interleaved_ms, sync
from lightning_mtl.models import MultiTaskModel, build_backbone, build_head
from lightning_mtl.sparsity import ProxAdamW

#: every optimizer's hyperparameters: ProxAdamW's defaults
HYPERPARAMETERS = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0}
#: the ProxAdamW cases: figure name → options
CASES: dict[str, dict] = {
    "adaptive_lambda_1e-4": {"lambda_": 1e-4},
    "adaptive_lambda_1e-2": {"lambda_": 1e-2},
    "euclidean": {"lambda_": 1e-4, "prox_metric": "euclidean"},
    "zero_lambda": {"lambda_": 0.0},
}
BASELINE = "AdamW(fused=True)"
DEFAULT = "AdamW()"


def kernels_on(device: torch.device) -> tuple[str, ...]:
    """The `ProxAdamW(kernel=…)` paths timed on `device`: the compiled kernel is CPU-only."""
    return ("eager", "compiled") if device.type == "cpu" else ("eager",)


def label(case: str, kernel: str) -> str:
    """The row (and timing key) of a ProxAdamW case on a kernel path."""
    return f"ProxAdamW {case.replace('_', ' ')}, {kernel}"


def optimizer_step(backbone: str, device: torch.device, rounds: int, min_run_time: float) -> dict:
    """ms per step of every optimizer on the backbone's conv weights, one set of weights each,
    the same fixed gradients for all."""
    convs = build_backbone(backbone).conv_layers()
    gen = torch.Generator().manual_seed(0)
    grads = [(1e-3 * torch.randn(c.weight.shape, generator=gen)).to(device) for _, c in convs]

    def make(cls: type[torch.optim.Optimizer], **kwargs) -> Callable[[], None]:
        params = [torch.nn.Parameter(conv.weight.detach().clone().to(device)) for _, conv in convs]
        for p, g in zip(params, grads, strict=True):
            p.grad = g  # read-only for every optimizer here
        opt = cls(params, **HYPERPARAMETERS, **kwargs)
        for _ in range(3):
            opt.step()

        def step() -> None:
            opt.step()
            sync(device)

        return step

    fns = {BASELINE: make(torch.optim.AdamW, fused=True), DEFAULT: make(torch.optim.AdamW)}
    for kernel in kernels_on(device):
        for case, options in CASES.items():
            fns[label(case, kernel)] = make(ProxAdamW, kernel=kernel, **options)
    times = interleaved_ms(fns, rounds, min_run_time)
    return {"convs": len(convs), "params": sum(c.weight.numel() for _, c in convs), "ms": times}


def training_step_share(
    backbone: str,
    image_size: tuple[int, int],
    batch_size: int,
    head_channels: int,
    device: torch.device,
    rounds: int,
) -> dict:
    """ms of a full seg+depth+normal training step with ProxAdamW (adaptive, its default
    kernel), and the prox's share of it: its step minus an AdamW(fused=True) step of the same
    parameters, over the training step."""
    net = build_backbone(backbone)
    heads = {k: build_head("dense", net.out_channels, c, head_channels) for k, c in TASKS.items()}
    model = MultiTaskModel(net, heads).to(device)
    convs = {id(c.weight) for _, c in net.conv_layers()}
    sparse = [p for p in model.parameters() if id(p) in convs]
    dense = [p for p in model.parameters() if id(p) not in convs]
    groups = [{"params": sparse, "lambda_": 1e-4}, {"params": dense}]
    opt = ProxAdamW(groups, **HYPERPARAMETERS)
    adamw = torch.optim.AdamW(model.parameters(), **HYPERPARAMETERS, fused=True)
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

    def step_of(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        def step() -> None:  # on the gradients the training step left
            optimizer.step()
            sync(device)

        return step

    train_step()
    adamw.step()
    fns = {"training step": train_step, "ProxAdamW step": step_of(opt), BASELINE: step_of(adamw)}
    times = interleaved_ms(fns, rounds, 0.0)
    share = (times["ProxAdamW step"] - times[BASELINE]) / times["training step"]
    return {**times, "share": share}


def figures(opt: dict, step: dict, device: torch.device) -> dict[str, float]:
    """The part's figures: ratios to AdamW(fused=True), one key each."""
    ms = opt["ms"]
    best = kernels_on(device)[-1]
    out = {f"prox_{case}_vs_adamw_fused": ms[label(case, best)] / ms[BASELINE] for case in CASES}
    out |= {f"prox_eager_{c}_vs_adamw_fused": ms[label(c, "eager")] / ms[BASELINE] for c in CASES}
    out["prox_adaptive_vs_adamw_fused"] = max(
        out["prox_adaptive_lambda_1e-4_vs_adamw_fused"],
        out["prox_adaptive_lambda_1e-2_vs_adamw_fused"],
    )
    out["adamw_default_vs_adamw_fused"] = ms[DEFAULT] / ms[BASELINE]
    out["prox_share_of_training_step"] = step["share"]
    return out


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Time both, print the table; `{"optimizer_step": ..., "training_step": ..., **figures}`."""
    opt = optimizer_step(options.backbone, device, options.rounds, options.min_run_time)
    square = (options.image_size, options.image_size)
    rounds = max(1, options.rounds // 2)
    step = training_step_share(
        options.backbone, square, options.batch_size, options.head_channels, device, rounds
    )
    table = Table(
        title=f"prox cost, dilated {options.backbone}, {device.type}, "
        f"{torch.get_num_threads()} threads",
        caption=f"optimizer steps on the {opt['convs']} convs ({opt['params']:,} weights), "
        f"lr {HYPERPARAMETERS['lr']}, eps {HYPERPARAMETERS['eps']}, weight decay "
        f"{HYPERPARAMETERS['weight_decay']}; training step {options.image_size}², batch "
        f"{options.batch_size}, seg+depth+normal heads",
    )
    table.add_column("measurement")
    table.add_column("ms", justify="right")
    table.add_column(f"× {BASELINE}", justify="right")
    base = opt["ms"][BASELINE]
    for name, ms in opt["ms"].items():
        table.add_row(f"{name} step", f"{ms:.1f}", f"{ms / base:.2f}×")
    table.add_row("training step (fwd+bwd+ProxAdamW)", f"{step['training step']:.1f}", "")
    extra = step["ProxAdamW step"] - step[BASELINE]
    table.add_row("adaptive prox share of it", f"{extra:.1f}", f"{100 * step['share']:.2f}%")
    console.print(table)
    return {"optimizer_step": opt, "training_step": step, **figures(opt, step, device)}
