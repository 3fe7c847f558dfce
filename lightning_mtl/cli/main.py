"""The `lightning-mtl` command: LightningCLI (fit/validate/test/predict) plus the jobs of `JOBS`.

Every subcommand parses with LightningCLI or jsonargparse, so each one takes `--config FILE`,
`--print_config` and dotted options; `lightning-mtl --help` is generated from `JOBS` and the
LightningCLI subcommands.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_mtl.lomt.pipeline import LOMTOptions
from lightning_mtl.meta.study import MetaStudyOptions
from lightning_mtl.pipelines.compact import Compacted, compact_checkpoint
from lightning_mtl.pipelines.fit import build_cli

PROG = "lightning-mtl"


@dataclass(frozen=True)
class Job:
    """A job subcommand: what it runs and how its command line becomes the call.

    `function`'s typed signature is the parser (a class's: its `__init__`): `--config FILE`,
    `--print_config`, one option per parameter (nested ones dotted), help from the docstring's
    `Args:`; `positional`: required parameters are positional arguments. The parsed values call
    `function`, and `then` (if given) gets its result. With `parses_itself`, `function` gets the
    raw arguments instead (a LightningCLI, or a jsonargparse parser of its own). The docstring of
    `then` (else `function`) describes the job; its first sentence is the job's line in the help.
    """

    function: Callable[..., Any]
    then: Callable[[Any], None] | None = None
    positional: bool = False
    parses_itself: bool = False

    @property
    def summary(self) -> str:
        """The job's line in `lightning-mtl --help`."""
        return _summary(self.then or self.function)

    def parser(self, name: str) -> ArgumentParser:
        """The job's jsonargparse parser (not for `parses_itself` jobs)."""
        doc = inspect.getdoc(self.then or self.function) or ""
        parser = ArgumentParser(prog=f"{PROG} {name}", description=doc.split("\nArgs:")[0])
        parser.add_argument(
            "--config", action=ActionConfigFile, help="a YAML of these options (--print_config)"
        )
        if inspect.isclass(self.function):
            parser.add_class_arguments(self.function, as_group=False, as_positional=self.positional)
        else:
            parser.add_function_arguments(
                self.function, as_group=False, as_positional=self.positional
            )
        return parser

    def run(self, name: str, args: Sequence[str]) -> None:
        """Parse `args` and run the job."""
        if self.parses_itself:
            self.function(list(args))
            return
        parser = self.parser(name)
        init = parser.instantiate(parser.parse_args(list(args)))
        values = {key: init[key] for key in inspect.signature(self.function).parameters}
        result = self.function(**values)
        if self.then is not None:
            self.then(result)


def _run(args: Sequence[str]) -> None:
    """Fit, test the best checkpoint, write result.json; skips a complete run, resumes a partial.

    A LightningCLI with the `fit` options: `lightning-mtl run --config FILE …`.
    """
    from lightning_mtl.pipelines.run import run_to_completion

    run_to_completion(list(args))


def _sweep(file: Path) -> None:
    """Run a sweep file's grid here, one run after another (complete runs skipped, resumable).

    The same W&B grid-sweep file works with `wandb sweep FILE`; complete runs are skipped and
    partial ones resumed. Exit status 1 when a run failed (rerun the sweep to retry it).

    Args:
        file: a sweep file (experiments/sweeps/*.yaml).
    """
    from lightning_mtl.pipelines.sweep import load_sweep, run_sweep

    sweep = load_sweep(file)
    failed = run_sweep(sweep)
    print(
        f"sweep {sweep.name}: {len(sweep) - len(failed)}/{len(sweep)} runs complete in {sweep.root}"
    )
    if failed:
        print("failed (rerun the sweep to retry them):\n  " + "\n  ".join(failed))
        sys.exit(1)
    print(f"report: {PROG} report {sweep.root}")


def _report(
    runs: Path,
    out: Path | None = None,
    split: Literal["test", "val"] = "test",
    spy: bool = True,
    latency_rounds: int = 0,
    latency_size: tuple[int, int] | None = None,
) -> None:
    """Tables (Markdown, CSV) and figures (PNG) of a folder of runs.

    Read from the runs' CSV logs and checkpoints alone (no network).

    Args:
        runs: the folder holding the run folders.
        out: output folder (default RUNS/report).
        split: the metrics of the test split (best checkpoint) or of the best val epoch.
        spy: a group spy plot per setting, from its first seed's best checkpoint.
        latency_rounds: > 0: time dense vs compacted models for the latency figure.
        latency_size: input size [H, W] of the latency timing (default: each run's image size).
    """
    from lightning_mtl.pipelines.report import report

    result = report(runs, out, split, spy, latency_rounds, latency_size)
    print((result.out / "table.md").read_text())
    for name, why in result.left_out.items():
        print(f"left out {name}: {why}")
    for note in result.notes:
        print(note)
    print(f"report: {result.out / 'report.md'} (tables, {len(result.figures)} figures)")


def _meta(args: Sequence[str]) -> None:
    """Meta-train λ (MetaSparsityModule), then meta-test on seen and unseen tasks; one table.

    A LightningCLI: the `fit` options plus `--meta_test.*`.
    """
    from lightning_mtl.meta.pipeline import run_meta

    run_meta(args)


def _meta_study(options: MetaStudyOptions) -> None:
    """Meta-sparsity over variants × seeds: λ curves and the meta-test, mean ± std over seeds.

    Every (variant, seed) is a `lightning-mtl meta` run (complete ones skipped, partial ones
    resumed); then ROOT/study.md, study.csv and lambda_curves.png. Exit status 1 when a run
    failed (rerun the study to retry it). A study YAML: experiments/meta/studies/*.yaml.
    """
    from lightning_mtl.meta.study import run_study

    os.environ.setdefault("WANDB_QUIET", "true")
    result = run_study(options)
    print(result.files[0].read_text())
    print(f"study: {', '.join(str(p) for p in result.files)}")
    if result.failed:
        print("failed (rerun the study to retry them):")
        for folder, error in result.failed.items():
            print(f"  {folder}: {error}")
        sys.exit(1)


def _lomt(options: LOMTOptions) -> None:
    """LOMT: stage-1 profiles → taps → LOMT vs conventional; prints the comparison.

    Layer-optimized multi-task models: single-task sparse runs pick each task's tap; LOMT and
    conventional models are trained and compared. A LOMT YAML: experiments/lomt/*.yaml.
    """
    from lightning_mtl.lomt.pipeline import run_pipeline

    os.environ.setdefault("WANDB_QUIET", "true")
    rows = run_pipeline(options)
    root = Path(options.root)
    if rows:
        print((root / "comparison.md").read_text())
        print(f"comparison: {root / 'comparison.md'}, {root / 'comparison.csv'}")
    print(f"profiles and stage-2 taps: {root / 'profiles'}, {root / 'stage2.yaml'}")


def _bench(args: Sequence[str]) -> None:
    """Benchmarks: prox cost vs AdamW and in a training step; data loader vs training; more."""
    from lightning_mtl.benchmarks.main import main as bench_main

    bench_main(list(args))


def _data(args: Sequence[str]) -> None:
    """Dataset checks: `data check --data nyuv2|celebamask --root DIR` reports every problem."""
    from datamodules.check import main as check_main

    sys.exit(check_main(list(args)))


def _compacted(result: Compacted) -> None:
    """Compact a checkpoint's model (drop its zero channel groups); save it, optionally export."""
    print(result.report.summary)
    print(f"wrote {', '.join(str(path) for path in result.files)}")


#: the job subcommands, in help order; dispatch and `lightning-mtl --help` both come from here
JOBS: dict[str, Job] = {
    "run": Job(_run, parses_itself=True),
    "sweep": Job(_sweep, positional=True),
    "report": Job(_report, positional=True),
    "meta": Job(_meta, parses_itself=True),
    "meta-study": Job(MetaStudyOptions, then=_meta_study),
    "lomt": Job(LOMTOptions, then=_lomt),
    "bench": Job(_bench, parses_itself=True),
    "data": Job(_data, parses_itself=True),
    "compact": Job(compact_checkpoint, then=_compacted),
}


def training_subcommands() -> dict[str, str]:
    """LightningCLI's subcommands (fit, validate, …) → the summary of their Trainer method."""
    return {name: _summary(getattr(Trainer, name)) for name in LightningCLI.subcommands()}


def _summary(function: Callable[..., Any]) -> str:
    """The first sentence of `function`'s docstring."""
    paragraph = (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ")
    return paragraph.split(". ")[0].removesuffix(".") + "."


def help_text() -> str:
    """`lightning-mtl --help`: the training subcommands and the jobs, each with its summary."""

    def rows(summaries: dict[str, str]) -> str:
        return "\n".join(f"  {name:<10} {summary}" for name, summary in summaries.items())

    jobs = {name: job.summary for name, job in JOBS.items()}
    return f"""usage: {PROG} SUBCOMMAND [options]

Parsimonious multi-task vision models with group-lasso sparsity, on PyTorch Lightning. Every
subcommand takes --config FILE, --print_config and dotted options (`--model.lambda_ 0.01`);
`{PROG} SUBCOMMAND --help` lists its options.

training (LightningCLI):
{rows(training_subcommands())}

jobs:
{rows(jobs)}
"""


def main(argv: Sequence[str] | None = None) -> None:
    """Run the subcommand `argv` (default `sys.argv[1:]`) names; exit status 2 on an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(help_text())
        return
    name = args[0]
    # options before any subcommand are LightningCLI's (`--config FILE` holding `fit: …`)
    if name not in JOBS and name not in LightningCLI.subcommands() and not name.startswith("-"):
        names = ", ".join([*LightningCLI.subcommands(), *JOBS])
        print(f"usage: {PROG} SUBCOMMAND [options]", file=sys.stderr)
        print(f"{PROG}: error: unknown subcommand {name!r}; choose one of {names}", file=sys.stderr)
        sys.exit(2)
    with _argv_consumed():
        if name in JOBS:
            JOBS[name].run(name, args[1:])
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
