"""`make gpu-check`: every GPU check in one command, at most 8 minutes on one GPU.

1. tests: the tests marked `gpu` (`python -m pytest -m gpu`), on CUDA;
2. bench: `lightning-mtl bench --parts prox` at the GPU's sizes: `ProxAdamW.step()` (Triton
   kernel and eager reference) against `AdamW(fused=True)` on the dilated ResNet-50 convs, the
   memory bandwidth both achieve, the host syncs of a step, and the prox's share of a
   bf16-mixed, channels_last training step (batch 16, 256², seg+depth+normal heads).

It writes one JSON file (`--json`): the bench's result (its keys are listed in
`lightning_mtl/benchmarks/prox.py`), plus `device` (`cuda` or `cpu`), `dry_run`, `torch`,
`triton` (versions), `stages` (per stage its wall time in seconds; the tests' exit code and
outcome; the bench's error, if it raised) and `targets` (per figure: the target, the value and
whether it is met). Targets are printed next to the figures, never asserted. The exit code is
1 when the tests failed or the bench raised, else 0.

Without CUDA (or with `--dry-run`) it is a dry run on the CPU: it says so, runs the gpu tests
with no CUDA device visible (all skipped) and the same benchmark at tiny sizes, and writes the
same keys with `"dry_run": true` — a check of the script and of the JSON's shape, not a figure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.main import main as bench

ROOT = Path(__file__).resolve().parents[1]
#: the bench's options on a GPU and in the dry run; both time the same code
BENCH_ARGS = ["--parts", "prox", "--precision", "bf16-mixed", "--channels_last", "true"]
GPU_SIZES = ["--backbone", "resnet50", "--image_size", "256", "--batch_size", "16"]
GPU_TIMING = ["--rounds", "5", "--min_run_time", "0.2"]
DRY_RUN_SIZES = [
    "--backbone", "mobilenet_v3_small",
    "--image_size", "32",
    "--batch_size", "2",
    "--head_channels", "8",
]  # fmt: skip
DRY_RUN_TIMING = ["--rounds", "1", "--min_run_time", "0.01"]
#: figure → (target, whether a value meets it)
TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "prox_adaptive_vs_adamw_fused": ("≤ 1.3× AdamW(fused=True)", lambda v: v <= 1.3),
    "prox_euclidean_vs_adamw_fused": ("≤ 1.15× AdamW(fused=True)", lambda v: v <= 1.15),
    "prox_zero_lambda_vs_adamw_fused": (
        "within 5 % of AdamW(fused=True)",
        lambda v: abs(v - 1) <= 0.05,
    ),
    "prox_share_of_training_step": ("< 2 % of the bf16 training step", lambda v: v < 0.02),
    "prox_host_syncs_per_step": ("0", lambda v: v == 0),
}
#: pytest's exit codes → outcome (5: no test selected, e.g. none is marked gpu)
PYTEST_OUTCOMES = {0: "passed", 1: "failed", 5: "no tests selected"}


def run_gpu_tests(dry_run: bool, timeout: float) -> dict:
    """Run the gpu-marked tests in a subprocess (no CUDA device visible in a dry run):
    `{"seconds", "exit_code", "outcome"}`; exit code None when it timed out."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if dry_run else None
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q"]
    sys.stdout.flush()  # what was printed comes before the tests' output
    start = time.perf_counter()
    try:
        code = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout).returncode
        outcome = PYTEST_OUTCOMES.get(code, f"error (pytest exit code {code})")
    except subprocess.TimeoutExpired:
        code, outcome = None, f"timed out after {timeout:g} s"
    return {"seconds": time.perf_counter() - start, "exit_code": code, "outcome": outcome}


def run_bench(dry_run: bool) -> tuple[dict, dict]:
    """The prox bench at the GPU's sizes (tiny ones on the CPU in a dry run): its result, and
    `{"seconds"}` plus `"error"` (the traceback) when it raised."""
    device = ["--device", "cpu" if dry_run else "cuda"]
    sizes = [*DRY_RUN_SIZES, *DRY_RUN_TIMING] if dry_run else [*GPU_SIZES, *GPU_TIMING]
    start = time.perf_counter()
    try:
        result, stage = bench([*BENCH_ARGS, *device, *sizes]), {}
    except Exception:  # the JSON still records the tests and what went wrong
        result, stage = {}, {"error": traceback.format_exc()}
    return result, {"seconds": time.perf_counter() - start, **stage}


def check_targets(result: dict) -> dict:
    """Per target figure: `{"target", "value", "met"}` (value and met None when not measured)."""
    checked = {}
    for key, (target, meets) in TARGETS.items():
        value = result.get(key)
        met = None if value is None else meets(value)
        checked[key] = {"target": target, "value": value, "met": met}
    return checked


def print_targets(targets: dict, dry_run: bool, console: Console) -> None:
    """The targets' table: figure, value, target, met."""
    note = " (dry run on the CPU: not the GPU's figures)" if dry_run else ""
    table = Table(title=f"targets{note}")
    table.add_column("figure", no_wrap=True)
    for column in ("value", "target", "met"):
        table.add_column(column)
    for key, entry in targets.items():
        value, met = entry["value"], entry["met"]
        shown = "n/a" if value is None else f"{value:.4g}"
        table.add_row(key, shown, entry["target"], "n/a" if met is None else "yes" if met else "NO")
    console.print(table)


def version(package: str) -> str | None:
    """The installed version of `package`, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="runs/gpu-check.json", help="where the result goes")
    parser.add_argument(
        "--dry-run", action="store_true", help="the CPU dry run, even where CUDA is available"
    )
    parser.add_argument(
        "--tests-timeout", type=float, default=300.0, help="seconds the gpu tests may take"
    )
    args = parser.parse_args(argv)
    console = Console()
    dry_run = args.dry_run or not torch.cuda.is_available()
    if dry_run:
        torch.set_num_threads(1)  # its timings mean nothing; one thread keeps a busy CPU quick
        reason = "--dry-run" if args.dry_run else "no CUDA device was found"
        console.print(
            f"[bold]gpu-check: {reason}: a dry run on the CPU[/] (gpu tests skipped, the "
            "benchmark at tiny sizes): it checks the script and the JSON's shape, no figure"
        )
    tests = run_gpu_tests(dry_run, args.tests_timeout)
    console.print(f"gpu tests: {tests['outcome']} in {tests['seconds']:.1f} s")
    result, bench_stage = run_bench(dry_run)
    if "error" in bench_stage:
        console.print("[red]bench failed:[/]")
        console.print(bench_stage["error"], markup=False, highlight=False)
    targets = check_targets(result)
    print_targets(targets, dry_run, console)
    report = {
        "device": "cpu" if dry_run else "cuda",
        "dry_run": dry_run,
        "torch": torch.__version__,
        "triton": version("triton"),
        "stages": {"tests": tests, "bench": bench_stage},
        "targets": targets,
        **result,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float, ensure_ascii=False) + "\n")
    total = tests["seconds"] + bench_stage["seconds"]
    console.print(f"gpu-check: wrote {path} ({total:.0f} s)")
    tests_ok = tests["outcome"] in ("passed", "no tests selected")
    return 0 if tests_ok and "error" not in bench_stage else 1


if __name__ == "__main__":
    sys.exit(main())
