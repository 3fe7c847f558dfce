"""The data part: the NYU-v2 loader's images/s (augmentation on, worker processes) against the
images/s a training step consumes at the same resolution: is data the bottleneck?"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.options import BenchOptions
from lightning_mtl.benchmarks.prox import training_step_share
from lightning_mtl.benchmarks.timing import Stopwatch


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
        seen = 0
        with Stopwatch() as watch:
            for batch in loader:
                seen += batch["image"].shape[0]
        return seen / watch.seconds


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Measure both rates, print the table; `{"data": {"loader_images_s", "train_images_s"}}`."""
    data_size = tuple(options.data_size)
    step = training_step_share(
        options.backbone, data_size, options.batch_size, options.head_channels, device, 1
    )
    train_images_s = options.batch_size / (step["training step"] / 1e3)
    loader_images_s = data_throughput(data_size, 8, options.data_workers, options.data_images)
    table = Table(
        title=f"data pipeline vs training step, {data_size[0]}×{data_size[1]}",
        caption=f"NYU-v2 loader (mtan files, augmentation on, {options.data_workers} workers, "
        f"batch 8) vs a training step at the same size, batch {options.batch_size}",
    )
    table.add_column("measurement")
    table.add_column("images/s", justify="right")
    table.add_row("NYU-v2 loader", f"{loader_images_s:.1f}")
    table.add_row("training step consumes", f"{train_images_s:.2f}")
    table.add_row("loader / training", f"{loader_images_s / train_images_s:.1f}×")
    console.print(table)
    return {"data": {"loader_images_s": loader_images_s, "train_images_s": train_images_s}}
