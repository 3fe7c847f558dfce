"""`lightning-mtl bench`: what the prox costs, as ratios measured in one run.

1. One `ProxAdamW.step()` (adaptive and euclidean group-lasso prox) against one
   `torch.optim.AdamW.step()` on the conv weights of a dilated ResNet.
2. The prox's share of a full training step (forward, backward, optimizer step) of the
   multi-task model (seg + depth + normal DeepLabV3 heads).
3. The NYU-v2 loader's images/s (augmentation on, worker processes) against the images/s a
   training step consumes at the same resolution: is data the bottleneck?
4. Compaction: MACs and latency of the backbone with 0–90 % of its input groups zeroed, dense
   vs compacted, at batch 1 and 8, plotted as latency vs sparsity.
5. Meta: one meta-sparsity outer step (B meta-tasks, K inner steps, support and query batches
   of b images; second and first order) against one plain multi-task training step at batch b
   on the same model: is meta-learning λ affordable next to tuning λ by grid search?

Timings are medians of `torch.utils.benchmark.Timer`; the compared statements alternate so that
machine noise hits them alike. Absolute times are not comparable between runs; ratios are.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.benchmark import Timer

from lightning_mtl.benchmarks.compaction import (
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


PARTS = ("prox", "data", "compaction", "meta")
#: (B, K, first order) outer-step configurations the meta part times by default
META_CONFIGS = ("2x1", "4x1", "2x2", "2x1fo")
_META_TASKS = {"seg": 13, "depth": 1, "normal": 3}


def parse_meta_config(spec: str) -> tuple[int, int, bool]:
    """`"4x1"` → (B=4, K=1, second order); `"2x1fo"` → (2, 1, first order)."""
    match = re.fullmatch(r"(\d+)x(\d+)(fo)?", spec)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(
            f"meta config must be BxK or BxKfo with B, K >= 1 (e.g. 2x1fo), got {spec!r}"
        )
    return int(match[1]), int(match[2]), match[3] is not None


def expected_meta_ratio(meta_batch_size: int, inner_steps: int, first_order: bool) -> float:
    """Outer step / MTL step in a cost model of forward = 1, backward = 2 units, all heads alike.

    MTL step: 1 forward + 1 backward = 3. Per meta-task: K inner steps of forward + backward
    (3K), the query forward + backward (3); second order also backpropagates through each inner
    step's forward + backward graph (≈ 2 + 4 = 6 per step). So B·(K+1) first order and
    B·(3K+1) second order.
    """
    per_task = 3 * inner_steps + 3 + (0 if first_order else 6 * inner_steps)
    return meta_batch_size * per_task / 3


def _meta_batch_data(
    size: int, image_size: int, gen: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """A random seg (13 classes) + depth + normal batch of `size` square images."""
    shape = (size, image_size, image_size)
    batch = {
        "image": torch.rand(size, 3, *shape[1:], generator=gen),
        "seg": torch.randint(0, _META_TASKS["seg"], shape, generator=gen),
        "depth": torch.rand(size, 1, *shape[1:], generator=gen) + 0.1,
        "normal": torch.nn.functional.normalize(
            torch.randn(size, 3, *shape[1:], generator=gen), dim=1
        ),
    }
    return {k: v.to(device) for k, v in batch.items()}


def meta_combinations(count: int) -> list[tuple[str, ...]]:
    """`count` distinct task combinations of seg, depth, normal, the most heads first: a meta-
    batch has distinct combinations, and the largest make the outer step's upper bound."""
    from datamodules.meta import task_combinations

    combos = sorted(task_combinations(list(_META_TASKS)), key=len, reverse=True)
    if count > len(combos):
        raise ValueError(f"B={count} exceeds the {len(combos)} distinct task combinations")
    return combos[:count]


class _StepTimer(L.Callback):
    """ms of every training batch: `training_step` and, under automatic optimization,
    Lightning's backward and optimizer step (all that happens between the two hooks)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        _sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        _sync(self.device)
        self.times.append(1e3 * (time.perf_counter() - self._start))


class _SameBatch(torch.utils.data.Dataset):
    def __init__(self, batch: object, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> object:
        return self.batch


def _as_is(batch: object) -> object:
    return batch


def _fit_step_times(
    module: L.LightningModule, batch: object, steps: int, device: torch.device
) -> list[float]:
    """ms of each of `steps` training steps of `module` on `batch` (already on `device`), run by
    a bare Trainer (no logger, checkpoints, progress bar or validation)."""
    timer = _StepTimer(device)
    loader = torch.utils.data.DataLoader(
        _SameBatch(batch, steps), batch_size=None, collate_fn=_as_is
    )
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)  # no "GPU available" banner per fit
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
            trainer = L.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=[device.index or 0] if device.type == "cuda" else 1,
                max_steps=steps,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                callbacks=[timer],
            )
            trainer.fit(module, train_dataloaders=loader)
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return timer.times


def meta_step_cost(args: argparse.Namespace, device: torch.device) -> dict:
    """ms of one MTL step and of one meta-sparsity outer step per config, and their ratios.

    Both modules' own `training_step`s run under a bare Trainer, so an outer step is exactly
    what meta-training does (inner loops, outer backward, rank reduce, ProxAdamW step, logging)
    and an MTL step is forward, backward and ProxAdamW step (λ > 0, the prox on). Each fit runs
    `meta_warmup` untimed steps, then `meta_rounds` timed; the MTL step is timed before and
    after the outer steps so that drifting machine load hits both.
    """
    from lightning_mtl.meta.module import MetaSparsityModule
    from lightning_mtl.modules import MultiTaskLightningModule
    from lightning_mtl.tasks import TargetSpec

    targets = {
        "seg": TargetSpec("seg", num_classes=_META_TASKS["seg"]),
        "depth": TargetSpec("depth"),
        "normal": TargetSpec("normal"),
    }
    model = {
        "tasks": list(_META_TASKS),
        "targets": targets,
        "backbone": args.meta_backbone,
        "backbone_options": {"width": args.meta_width, "layers": list(args.meta_layers)},
        "head_channels": args.meta_head_channels,
    }
    configs = {spec: parse_meta_config(spec) for spec in args.meta_configs}
    combos = {spec: meta_combinations(count) for spec, (count, _, _) in configs.items()}
    if args.meta_warmup < 0 or args.meta_rounds < 1:
        raise ValueError(
            f"meta_warmup must be >= 0 and meta_rounds >= 1, got {args.meta_warmup}, "
            f"{args.meta_rounds}"
        )
    gen = torch.Generator().manual_seed(0)
    b, size = args.meta_batch_size, args.meta_image_size
    steps = args.meta_warmup + args.meta_rounds
    mtl_batch = _meta_batch_data(b, size, gen, device)

    def mtl_times() -> list[float]:
        torch.manual_seed(0)
        mtl = MultiTaskLightningModule(**model, lambda_=1e-4)
        return _fit_step_times(mtl, mtl_batch, steps, device)[args.meta_warmup :]

    mtl = mtl_times()
    result: dict[str, dict] = {}
    for spec, (count, inner_steps, first_order) in configs.items():
        meta_batch = [
            {
                "tasks": combo,
                "support": _meta_batch_data(b, size, gen, device),
                "query": _meta_batch_data(b, size, gen, device),
            }
            for combo in combos[spec]
        ]
        torch.manual_seed(0)
        module = MetaSparsityModule(
            **model, lambda_init=1e-4, inner_steps=inner_steps, first_order=first_order
        )
        times = _fit_step_times(module, meta_batch, steps, device)[args.meta_warmup :]
        result[spec] = {
            "B": count,
            "K": inner_steps,
            "first_order": first_order,
            "tasks": ["+".join(m["tasks"]) for m in meta_batch],
            "ms": statistics.median(times),
            "expected_ratio": expected_meta_ratio(count, inner_steps, first_order),
        }
    mtl += mtl_times()
    mtl_ms = statistics.median(mtl)
    for r in result.values():
        r["ratio"] = r["ms"] / mtl_ms
    return {"mtl_ms": mtl_ms, "configs": result}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lightning-mtl bench", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated")
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
    meta = parser.add_argument_group(
        "meta part", "meta-sparsity outer step vs MTL step; its own (smaller) model"
    )
    meta.add_argument("--meta-backbone", default="resnet50")
    meta.add_argument(
        "--meta-width", type=int, default=16, help="stem/first-stage channels (ResNet: 64)"
    )
    meta.add_argument(
        "--meta-layers",
        type=int,
        nargs=4,
        default=[1, 1, 1, 1],
        metavar="N",
        help="blocks per stage (ResNet-50: 3 4 6 3)",
    )
    meta.add_argument("--meta-head-channels", type=int, default=64)
    meta.add_argument("--meta-image-size", type=int, default=48, help="side of the square inputs")
    meta.add_argument(
        "--meta-batch-size", type=int, default=2, help="b: MTL batch = support = query size"
    )
    meta.add_argument(
        "--meta-configs",
        nargs="+",
        default=list(META_CONFIGS),
        metavar="BxK[fo]",
        help="outer steps to time: B meta-tasks x K inner steps, 'fo' = first order",
    )
    meta.add_argument("--meta-warmup", type=int, default=1, help="untimed steps per config")
    meta.add_argument("--meta-rounds", type=int, default=3, help="timed steps per config")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; the parts are {list(PARTS)}")
    device = torch.device(args.device)
    console = Console()
    result: dict = {}
    if "prox" in parts:
        result.update(_prox_part(args, device, console))
    if "data" in parts:
        result["data"] = _data_part(args, device, console)
    if "compaction" in parts:
        result["compaction"] = _compaction_part(args, device, console)
    if "meta" in parts:
        result["meta"] = _meta_part(args, device, console)
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


def _meta_part(args: argparse.Namespace, device: torch.device, console: Console) -> dict:
    result = meta_step_cost(args, device)
    layers = "-".join(map(str, args.meta_layers))
    largest = max(result["configs"].values(), key=lambda r: r["B"])["tasks"]
    table = Table(
        title=f"meta-sparsity outer step vs MTL step, dilated {args.meta_backbone} "
        f"(width {args.meta_width}, blocks {layers}), {args.meta_image_size}², "
        f"{device.type}, {torch.get_num_threads()} threads",
        caption=f"MTL step: fwd + bwd + ProxAdamW step on a batch of b = "
        f"{args.meta_batch_size}, seg+depth+normal heads ({args.meta_head_channels} ch). "
        "Outer step: MetaSparsityModule.training_step on B meta-tasks with support and query "
        f"batches of b; meta-tasks are distinct task combinations, most heads first "
        f"({', '.join(largest)}). ms: median of {args.meta_rounds} steps after "
        f"{args.meta_warmup} warm-up (MTL: before and after the outer steps). fwds: forward "
        "passes per step. expected: fwd = 1, bwd = 2, bwd through a bwd = 4 units, heads "
        "counted as the whole model: B·(K+1) first order, B·(3K+1) second order. At equal "
        "step counts, meta-sparsity costs as much as a λ grid search of `ratio` values.",
    )
    for column in ("step", "B", "K", "order", "fwds", "ms", "ratio", "expected"):
        table.add_column(column, justify="right")
    table.add_row("MTL step", "", "", "", "1", f"{result['mtl_ms']:.1f}", "1.00×", "1×")
    for spec, r in result["configs"].items():
        table.add_row(
            f"outer {spec}",
            str(r["B"]),
            str(r["K"]),
            "first" if r["first_order"] else "second",
            str(r["B"] * (r["K"] + 1)),
            f"{r['ms']:.1f}",
            f"{r['ratio']:.2f}×",
            f"{r['expected_ratio']:.0f}×",
        )
    console.print(table)
    return result
