"""The meta part: one meta-sparsity outer step (B meta-tasks, K inner steps, support and query
batches of b images; second and first order) against one plain multi-task training step at
batch b on the same model: is meta-learning λ affordable next to tuning λ by grid search?"""

from __future__ import annotations

import logging
import re
import statistics
import warnings

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.options import TASKS, BenchOptions
from lightning_mtl.benchmarks.timing import StepTimer


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


def _batch_data(
    size: int, image_size: int, gen: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """A random seg (13 classes) + depth + normal batch of `size` square images."""
    shape = (size, image_size, image_size)
    batch = {
        "image": torch.rand(size, 3, *shape[1:], generator=gen),
        "seg": torch.randint(0, TASKS["seg"], shape, generator=gen),
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

    combos = sorted(task_combinations(list(TASKS)), key=len, reverse=True)
    if count > len(combos):
        raise ValueError(f"B={count} exceeds the {len(combos)} distinct task combinations")
    return combos[:count]


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
    timer = StepTimer(device)
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


def meta_step_cost(options: BenchOptions, device: torch.device) -> dict:
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
        "seg": TargetSpec("seg", num_classes=TASKS["seg"]),
        "depth": TargetSpec("depth"),
        "normal": TargetSpec("normal"),
    }
    model = {
        "tasks": list(TASKS),
        "targets": targets,
        "backbone": options.meta_backbone,
        "backbone_options": {"width": options.meta_width, "layers": list(options.meta_layers)},
        "head_channels": options.meta_head_channels,
    }
    configs = {spec: parse_meta_config(spec) for spec in options.meta_configs}
    combos = {spec: meta_combinations(count) for spec, (count, _, _) in configs.items()}
    warmup = options.meta_warmup
    if warmup < 0 or options.meta_rounds < 1:
        raise ValueError(
            f"meta_warmup must be >= 0 and meta_rounds >= 1, got {warmup}, {options.meta_rounds}"
        )
    gen = torch.Generator().manual_seed(0)
    b, size = options.meta_batch_size, options.meta_image_size
    steps = warmup + options.meta_rounds
    mtl_batch = _batch_data(b, size, gen, device)

    def mtl_times() -> list[float]:
        torch.manual_seed(0)
        mtl = MultiTaskLightningModule(**model, lambda_=1e-4)
        return _fit_step_times(mtl, mtl_batch, steps, device)[warmup:]

    mtl = mtl_times()
    result: dict[str, dict] = {}
    for spec, (count, inner_steps, first_order) in configs.items():
        meta_batch = [
            {
                "tasks": combo,
                "support": _batch_data(b, size, gen, device),
                "query": _batch_data(b, size, gen, device),
            }
            for combo in combos[spec]
        ]
        torch.manual_seed(0)
        module = MetaSparsityModule(
            **model, lambda_init=1e-4, inner_steps=inner_steps, first_order=first_order
        )
        times = _fit_step_times(module, meta_batch, steps, device)[warmup:]
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


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Time the steps, print the table; `{"meta": meta_step_cost's result}`."""
    result = meta_step_cost(options, device)
    layers = "-".join(map(str, options.meta_layers))
    largest = max(result["configs"].values(), key=lambda r: r["B"])["tasks"]
    table = Table(
        title=f"meta-sparsity outer step vs MTL step, dilated {options.meta_backbone} "
        f"(width {options.meta_width}, blocks {layers}), {options.meta_image_size}², "
        f"{device.type}, {torch.get_num_threads()} threads",
        caption=f"MTL step: fwd + bwd + ProxAdamW step on a batch of b = "
        f"{options.meta_batch_size}, seg+depth+normal heads ({options.meta_head_channels} ch). "
        "Outer step: MetaSparsityModule.training_step on B meta-tasks with support and query "
        f"batches of b; meta-tasks are distinct task combinations, most heads first "
        f"({', '.join(largest)}). ms: median of {options.meta_rounds} steps after "
        f"{options.meta_warmup} warm-up (MTL: before and after the outer steps). fwds: forward "
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
    return {"meta": result}
