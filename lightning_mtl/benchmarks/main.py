"""`lightning-mtl bench`: what the prox costs, as ratios measured in one run.

1. prox: one `ProxAdamW.step()` (eager and compiled kernel) against one torch
   `AdamW(fused=True).step()`, and the prox's share of a full multi-task training step
   (`benchmarks/prox.py`).
2. data: the NYU-v2 loader's images/s against what a training step consumes (`data.py`).
3. compaction: MACs and latency of dense vs compacted backbones, 0–90 % zero groups
   (`compaction.py`).
4. meta: one meta-sparsity outer step against one MTL training step (`meta.py`).
5. backbones: params, MACs, compaction error and training-step time of torchvision backbones
   against the dilated ResNet (`backbones.py`; not in the default `--parts`).
6. train_compaction: total training time of a config with and without `TrainTimeCompaction`,
   3 seeds each, and the metrics of both (`train_compaction.py`; not in the default `--parts`:
   it trains six models, about 12 minutes on a 2-core CPU).

Timings are medians of `torch.utils.benchmark.Timer` (`timing.py`); the compared statements
alternate so that machine noise hits them alike. Absolute times are not comparable between
runs; ratios are. `--json FILE` also writes the result, every figure under its own key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from lightning_mtl.benchmarks import backbones, compaction, data, meta, prox, train_compaction
from lightning_mtl.benchmarks.meta import expected_meta_ratio, parse_meta_config
from lightning_mtl.benchmarks.options import DEFAULT_PARTS, BenchOptions, Part

__all__ = ["PARTS", "BenchOptions", "Part", "expected_meta_ratio", "main", "parse_meta_config"]

#: part name → its `run(options, device, console)`, which prints the part's table and returns
#: the entries it adds to `main`'s result: its raw measurements and its figures, one top-level
#: key each (what `--json` writes)
PARTS: dict[Part, Callable[[BenchOptions, torch.device, Console], dict]] = {
    "prox": prox.run,
    "data": data.run,
    "compaction": compaction.run,
    "meta": meta.run,
    "backbones": backbones.run,
    "train_compaction": train_compaction.run,
}


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse `argv` (`--help`, `--config FILE`, `--print_config`), run the chosen parts in
    order, print a table per part and return every part's numbers."""
    parser = ArgumentParser(prog="lightning-mtl bench", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML of these options")
    # `parts` as a list option would need brackets (`--parts '[prox]'`); as one or more values
    # it reads `--parts prox compaction`, and a config file's `parts: [prox, compaction]`
    parser.add_class_arguments(BenchOptions, skip={"parts"})
    parser.add_argument(
        "--parts",
        type=Part,
        nargs="+",
        metavar="PART",
        default=list(DEFAULT_PARTS),
        help=f"one or more parts to run (`--parts prox compaction`); they run in the order "
        f"{', '.join(PARTS)}",
    )
    config = parser.parse_args(argv)
    options = BenchOptions(**{f.name: config[f.name] for f in dataclasses.fields(BenchOptions)})
    device = torch.device(options.device)
    console = Console()
    result: dict = {}
    for name, run in PARTS.items():
        if name in options.parts:
            result.update(run(options, device, console))
    if options.json:
        Path(options.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result
