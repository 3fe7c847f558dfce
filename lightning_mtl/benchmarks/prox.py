"""The prox part: one `ProxAdamW.step()` (adaptive group lasso at two λ, euclidean, λ = 0;
eager and with the fused kernel of the device: the compiled C++ one on CPU, the Triton one on
CUDA) against one torch `AdamW(fused=True).step()` with the same hyperparameters on the conv
weights of a dilated ResNet, with torch's default AdamW for reference, the memory bandwidth
each step achieves, the host syncs each makes on CUDA, and the prox's share of a full training
step (forward, backward, optimizer step) of the seg + depth + normal model, in float32 or
bf16-mixed, contiguous or channels_last (`BenchOptions.precision`, `channels_last`).

Its figures (`--json`): `prox_{case}_vs_adamw_fused` per case (the device's fused kernel; the
eager path where there is none), `prox_eager_{case}_vs_adamw_fused`,
`prox_adaptive_vs_adamw_fused` (the larger of the two adaptive ones),
`adamw_default_vs_adamw_fused`, `prox_share_of_training_step`; the achieved bandwidth as a
fraction of the device's peak, `adamw_fused_bandwidth_fraction` and
`prox_{case}_bandwidth_fraction` (7 tensor passes per weight, the least any AdamW step moves,
over the step's time); the peak itself, `peak_bandwidth_bytes_per_s`, and where it came from,
`peak_bandwidth_source` (the table `PEAK_BANDWIDTH` by device name, else a measured
device-to-device copy); `prox_host_syncs_per_step` (the most of any case, on CUDA; null
elsewhere) and `device_name`."""

from __future__ import annotations

import platform

import torch
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.options import TASKS, BenchOptions
from lightning_mtl.benchmarks.timing import host_syncs_per_step, interleaved_ms, median_ms
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
#: tensor passes of an AdamW step per weight: reads param, grad, exp_avg, exp_avg_sq and writes
#: param, exp_avg, exp_avg_sq; the least the fused prox kernel can move too
ADAMW_TENSOR_PASSES = 7
#: peak memory bandwidth (bytes/s) by GPU: (name, words its device name holds, lower case,
#: bytes/s); the first match counts
PEAK_BANDWIDTH: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("H200", ("h200",), 4.8e12),
    ("H100 PCIe", ("h100", "pcie"), 2.0e12),
    ("H100 NVL", ("h100", "nvl"), 3.9e12),
    ("H100 SXM", ("h100",), 3.35e12),
    ("A100 80GB", ("a100", "80gb"), 2.0e12),
    ("A100 40GB", ("a100", "40gb"), 1.555e12),
)


def kernels_on(device: torch.device) -> tuple[str, ...]:
    """The `ProxAdamW(kernel=…)` paths timed on `device`: the eager reference, then the
    device's fused kernel (compiled C++ on CPU, Triton on CUDA) where it has one."""
    fused = {"cpu": "compiled", "cuda": "triton"}.get(device.type)
    return ("eager", fused) if fused else ("eager",)


def label(case: str, kernel: str) -> str:
    """The row (and timing key) of a ProxAdamW case on a kernel path."""
    return f"ProxAdamW {case.replace('_', ' ')}, {kernel}"


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the processor's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def tabulated_bandwidth(name: str) -> tuple[str, float] | None:
    """(table entry, bytes/s) of the `PEAK_BANDWIDTH` entry matching a device name, or None."""
    words = name.lower()
    for entry, needed, bytes_per_s in PEAK_BANDWIDTH:
        if all(word in words for word in needed):
            return entry, bytes_per_s
    return None


def copy_bandwidth(device: torch.device, nbytes: int, min_run_time: float) -> float:
    """Bytes/s of a device-to-device copy of `nbytes` (read and write both counted)."""
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source), min_run_time)
    return 2 * nbytes / (ms / 1e3)


def peak_bandwidth(device: torch.device, nbytes: int, min_run_time: float) -> dict:
    """`{"bytes_per_s", "source"}`: the table's figure for the device, else that of a measured
    copy of `nbytes` (a practical peak rather than a data sheet's)."""
    found = tabulated_bandwidth(device_name(device))
    if found is not None:
        entry, bytes_per_s = found
        return {"bytes_per_s": bytes_per_s, "source": f"table: {entry}"}
    measured = copy_bandwidth(device, nbytes, min_run_time)
    return {"bytes_per_s": measured, "source": f"measured: copy of {nbytes:,} bytes"}


def optimizer_step(backbone: str, device: torch.device, rounds: int, min_run_time: float) -> dict:
    """ms per step of every optimizer on the backbone's conv weights, one set of weights each,
    the same fixed gradients for all; the bytes a step moves at the least, and the host syncs
    per step on CUDA."""
    convs = build_backbone(backbone).conv_layers()
    weights = [conv.weight.detach().to(device) for _, conv in convs]
    gen = torch.Generator().manual_seed(0)
    grads = [(1e-3 * torch.randn(w.shape, generator=gen)).to(device) for w in weights]

    def make(cls: type[torch.optim.Optimizer], **kwargs) -> torch.optim.Optimizer:
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g  # read-only for every optimizer here
        opt = cls(params, **HYPERPARAMETERS, **kwargs)
        for _ in range(3):
            opt.step()
        return opt

    optimizers = {BASELINE: make(torch.optim.AdamW, fused=True), DEFAULT: make(torch.optim.AdamW)}
    for kernel in kernels_on(device):
        for case, options in CASES.items():
            optimizers[label(case, kernel)] = make(ProxAdamW, kernel=kernel, **options)
    syncs = {name: host_syncs_per_step(opt.step, device) for name, opt in optimizers.items()}
    times = interleaved_ms(
        {name: opt.step for name, opt in optimizers.items()}, rounds, min_run_time
    )
    return {
        "convs": len(convs),
        "params": sum(w.numel() for w in weights),
        "bytes_per_step": ADAMW_TENSOR_PASSES * sum(w.numel() * w.element_size() for w in weights),
        "ms": times,
        "host_syncs_per_step": syncs,
    }


def training_step_share(
    backbone: str,
    image_size: tuple[int, int],
    batch_size: int,
    head_channels: int,
    device: torch.device,
    rounds: int,
    precision: str = "32-true",
    channels_last: bool = False,
) -> dict:
    """ms of a full seg+depth+normal training step with ProxAdamW (adaptive, its default
    kernel), and the prox's share of it: its step minus an AdamW(fused=True) step of the same
    parameters, over the training step. `precision="bf16-mixed"` runs forward and loss under
    bfloat16 autocast (as Lightning's bf16-mixed does); `channels_last` converts the model's
    weights and the images."""
    net = build_backbone(backbone)
    heads = {k: build_head("dense", net.out_channels, c, head_channels) for k, c in TASKS.items()}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = MultiTaskModel(net, heads).to(device, memory_format=fmt)
    convs = {id(c.weight) for _, c in net.conv_layers()}
    sparse = [p for p in model.parameters() if id(p) in convs]
    dense = [p for p in model.parameters() if id(p) not in convs]
    groups = [{"params": sparse, "lambda_": 1e-4}, {"params": dense}]
    opt = ProxAdamW(groups, **HYPERPARAMETERS)
    adamw = torch.optim.AdamW(model.parameters(), **HYPERPARAMETERS, fused=True)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, *image_size, generator=gen).to(device, memory_format=fmt)
    targets = {
        k: torch.randn(batch_size, c, *image_size, generator=gen).to(device)
        for k, c in TASKS.items()
    }
    bf16 = precision == "bf16-mixed"

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            preds = model(images)
            loss = sum(torch.nn.functional.mse_loss(preds[k], targets[k]) for k in preds)
        loss.backward()
        opt.step()

    train_step()
    adamw.step()
    fns = {"training step": train_step, "ProxAdamW step": opt.step, BASELINE: adamw.step}
    times = interleaved_ms(fns, rounds, 0.0)
    share = (times["ProxAdamW step"] - times[BASELINE]) / times["training step"]
    return {**times, "share": share}


def figures(opt: dict, step: dict, device: torch.device) -> dict[str, float | None]:
    """The part's figures: ratios to AdamW(fused=True), bandwidth fractions and host syncs,
    one key each."""
    ms = opt["ms"]
    best = kernels_on(device)[-1]
    out: dict[str, float | None] = {
        f"prox_{case}_vs_adamw_fused": ms[label(case, best)] / ms[BASELINE] for case in CASES
    }
    out |= {f"prox_eager_{c}_vs_adamw_fused": ms[label(c, "eager")] / ms[BASELINE] for c in CASES}
    out["prox_adaptive_vs_adamw_fused"] = max(
        out["prox_adaptive_lambda_1e-4_vs_adamw_fused"],
        out["prox_adaptive_lambda_1e-2_vs_adamw_fused"],
    )
    out["adamw_default_vs_adamw_fused"] = ms[DEFAULT] / ms[BASELINE]
    out["prox_share_of_training_step"] = step["share"]
    fractions = opt["bandwidth_fraction"]
    out["adamw_fused_bandwidth_fraction"] = fractions[BASELINE]
    out |= {f"prox_{c}_bandwidth_fraction": fractions[label(c, best)] for c in CASES}
    syncs = [opt["host_syncs_per_step"][label(case, best)] for case in CASES]
    out["prox_host_syncs_per_step"] = None if None in syncs else max(syncs)
    return out


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Time both, print the table; `{"optimizer_step": ..., "training_step": ...,
    "device_name": ..., "peak_bandwidth_bytes_per_s": ..., "peak_bandwidth_source": ...,
    **figures}`."""
    opt = optimizer_step(options.backbone, device, options.rounds, options.min_run_time)
    peak = peak_bandwidth(device, opt["bytes_per_step"] // 2, options.min_run_time)
    opt["bandwidth_fraction"] = {
        name: opt["bytes_per_step"] / (ms / 1e3) / peak["bytes_per_s"]
        for name, ms in opt["ms"].items()
    }
    square = (options.image_size, options.image_size)
    rounds = max(1, options.rounds // 2)
    step = training_step_share(
        options.backbone,
        square,
        options.batch_size,
        options.head_channels,
        device,
        rounds,
        options.precision,
        options.channels_last,
    )
    layout = "channels_last" if options.channels_last else "contiguous"
    table = Table(
        title=f"prox cost, {options.backbone}, {device_name(device)}, "
        f"{torch.get_num_threads()} threads",
        caption=f"optimizer steps on the {opt['convs']} convs ({opt['params']:,} weights), "
        f"ratios to {BASELINE}, lr {HYPERPARAMETERS['lr']}, eps {HYPERPARAMETERS['eps']}, "
        f"weight decay {HYPERPARAMETERS['weight_decay']}; bandwidth (BW): "
        f"{ADAMW_TENSOR_PASSES} passes per weight over the step's time, of "
        f"{peak['bytes_per_s'] / 1e12:.3g} TB/s ({peak['source']}); "
        f"training step {options.image_size}², batch {options.batch_size}, seg+depth+normal "
        f"heads, {options.precision}, {layout}",
    )
    table.add_column("step", no_wrap=True)
    table.add_column("ms", justify="right")
    table.add_column("× fused AdamW", justify="right")
    table.add_column("of peak BW", justify="right")
    table.add_column("host syncs", justify="right")
    base = opt["ms"][BASELINE]
    for name, ms in opt["ms"].items():
        syncs = opt["host_syncs_per_step"][name]
        table.add_row(
            name,
            f"{ms:.4g}",
            f"{ms / base:.2f}×",
            f"{100 * opt['bandwidth_fraction'][name]:.1f}%",
            "" if syncs is None else f"{syncs:g}",
        )
    table.add_row("training step (fwd+bwd+ProxAdamW)", f"{step['training step']:.4g}", "")
    extra = step["ProxAdamW step"] - step[BASELINE]
    table.add_row("adaptive prox share of it", f"{extra:.4g}", f"{100 * step['share']:.2f}%")
    console.print(table)
    return {
        "optimizer_step": opt,
        "training_step": step,
        "device_name": device_name(device),
        "peak_bandwidth_bytes_per_s": peak["bytes_per_s"],
        "peak_bandwidth_source": peak["source"],
        **figures(opt, step, device),
    }
