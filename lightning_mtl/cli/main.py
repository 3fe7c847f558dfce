"""The `lightning-mtl` command: LightningCLI (fit/validate/test/predict) plus job subcommands."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from lightning_mtl.modules import MultiTaskLightningModule
from lightning_mtl.pipelines.fit import build_cli


def _lomt(args: Sequence[str]) -> None:
    """LOMT: stage-1 profiles → taps → LOMT vs conventional; prints the comparison."""
    import dataclasses

    from jsonargparse import ActionConfigFile, ArgumentParser

    from lightning_mtl.lomt.pipeline import LOMTOptions, run_pipeline

    os.environ.setdefault("WANDB_QUIET", "true")
    parser = ArgumentParser(
        prog="lightning-mtl lomt",
        description="Layer-optimized multi-task models: single-task sparse runs pick each "
        "task's tap; LOMT and conventional models are trained and compared.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a LOMT YAML (experiments/lomt)")
    parser.add_class_arguments(LOMTOptions)
    init = parser.instantiate(parser.parse_args(list(args)))
    options = LOMTOptions(**{f.name: init[f.name] for f in dataclasses.fields(LOMTOptions)})
    rows = run_pipeline(options)
    root = Path(options.root)
    if rows:
        print((root / "comparison.md").read_text())
        print(f"comparison: {root / 'comparison.md'}, {root / 'comparison.csv'}")
    print(f"profiles and stage-2 taps: {root / 'profiles'}, {root / 'stage2.yaml'}")


def _bench(args: Sequence[str]) -> None:
    from lightning_mtl.benchmarks.main import main as bench_main

    bench_main(list(args))


def _compact(args: Sequence[str]) -> None:
    """Compact a checkpoint's model; save it, and optionally export TorchScript and ONNX."""
    import argparse

    import torch

    from lightning_mtl.sparsity import compact, export_onnx, export_torchscript, save_compacted

    parser = argparse.ArgumentParser(
        prog="lightning-mtl compact", description="Remove the zero channel groups of a model."
    )
    parser.add_argument("--ckpt", required=True, help="a MultiTaskLightningModule checkpoint")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--torchscript", action="store_true", help="also write model.ts")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx")
    options = parser.parse_args(args)
    module = MultiTaskLightningModule.load_from_checkpoint(options.ckpt, map_location="cpu")
    model = module.model.eval()
    example = torch.rand(1, 3, *options.image_size)
    report = compact(model, example)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    save_compacted(model, out / "model.pt")
    written = ["model.pt"]
    if options.torchscript:
        export_torchscript(model, out / "model.ts", example)
        written.append("model.ts")
    if options.onnx:
        export_onnx(model, out / "model.onnx", example)
        written.append("model.onnx")
    print(report.summary)
    print(f"wrote {', '.join(str(out / name) for name in written)}")


def _meta(args: Sequence[str]) -> None:
    from lightning_mtl.meta.pipeline import run_meta

    run_meta(args)


def _run(args: Sequence[str]) -> None:
    from lightning_mtl.pipelines.run import run_to_completion

    run_to_completion(list(args))


def _sweep(args: Sequence[str]) -> None:
    """Run a sweep file's grid here, one run after another (resumable)."""
    import argparse

    from lightning_mtl.pipelines.sweep import load_sweep, run_sweep

    parser = argparse.ArgumentParser(
        prog="lightning-mtl sweep",
        description="Run a W&B grid-sweep file's runs here, one after another; complete runs "
        "are skipped and partial ones resumed. The same file works with `wandb sweep`.",
    )
    parser.add_argument("file", help="a sweep file (experiments/sweeps/*.yaml)")
    sweep = load_sweep(parser.parse_args(args).file)
    failed = run_sweep(sweep)
    print(
        f"sweep {sweep.name}: {len(sweep) - len(failed)}/{len(sweep)} runs complete in {sweep.root}"
    )
    if failed:
        print("failed (rerun the sweep to retry them):\n  " + "\n  ".join(failed))
        sys.exit(1)
    print(f"report: lightning-mtl report {sweep.root}")


def _report(args: Sequence[str]) -> None:
    """Tables and figures of a folder of runs."""
    import argparse

    from lightning_mtl.pipelines.report import report

    parser = argparse.ArgumentParser(
        prog="lightning-mtl report",
        description="Tables (Markdown, CSV) and figures (PNG) of a folder of runs, from their "
        "CSV logs and checkpoints.",
    )
    parser.add_argument("runs", type=Path, help="the folder holding the run folders")
    parser.add_argument("--out", type=Path, help="output folder (default RUNS/report)")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--no-spy", action="store_true", help="skip the per-run spy plots")
    parser.add_argument(
        "--latency-rounds", type=int, default=0,
        help="> 0: time dense vs compacted models for the latency figure",
    )  # fmt: skip
    parser.add_argument(
        "--latency-size", type=int, nargs=2, metavar=("H", "W"),
        help="input size of the latency timing (default: each run's image size)",
    )  # fmt: skip
    options = parser.parse_args(args)
    result = report(
        options.runs,
        options.out,
        options.split,
        not options.no_spy,
        options.latency_rounds,
        tuple(options.latency_size) if options.latency_size else None,
    )
    print((result.out / "table.md").read_text())
    for name, why in result.left_out.items():
        print(f"left out {name}: {why}")
    for note in result.notes:
        print(note)
    print(f"report: {result.out / 'report.md'} (tables, {len(result.figures)} figures)")


def _data(args: Sequence[str]) -> None:
    from datamodules.check import main as check_main

    sys.exit(check_main(list(args)))


JOBS: dict[str, tuple[Callable[[Sequence[str]], None], str]] = {
    "run": (_run, "fit ARGS, test the best checkpoint, result.json; resumes/skips its folder"),
    "sweep": (_sweep, "FILE: run a sweep file's grid here, resumable (or `wandb sweep FILE`)"),
    "report": (_report, "RUNS: tables (md/csv) and figures (png) of a folder of runs"),
    "meta": (_meta, "--config FILE: meta-train λ (MetaSparsityModule), then meta-test, table"),
    "lomt": (_lomt, "--config FILE: LOMT stage 1 → tap selection → LOMT vs conventional"),
    "bench": (_bench, "prox cost vs AdamW and in a training step; data loader vs training"),
    "data": (_data, "data check --data nyuv2|celebamask --root DIR: report every problem"),
    "compact": (_compact, "--ckpt FILE --out DIR: remove zero channel groups, save/export"),
}

HELP = """usage: lightning-mtl SUBCOMMAND [options]

Parsimonious multi-task vision models with group-lasso sparsity, on PyTorch Lightning.

training (LightningCLI: --config FILE, --print_config, dotted overrides; `SUBCOMMAND --help`):
  fit        train and validate           lightning-mtl fit --config experiments/synthetic.yaml
  validate   evaluate on the val split    lightning-mtl validate --config … --ckpt_path …
  test       evaluate on the test split   lightning-mtl test --config … --ckpt_path …
  predict    predict on the predict split lightning-mtl predict --config … --ckpt_path …

jobs:
{jobs}
"""


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        jobs = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in JOBS.items())
        print(HELP.format(jobs=jobs))
        return
    with _argv_consumed():
        if args[0] in JOBS:
            JOBS[args[0]][0](args[1:])
        else:
            build_cli(args)


@contextlib.contextmanager
def _argv_consumed() -> Iterator[None]:
    """The command line is parsed here; the LightningCLIs a command builds get `args` only
    (LightningCLI warns when it sees both)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
