"""The `lightning-mtl` command: LightningCLI (fit/validate/test/predict) plus job subcommands."""

from __future__ import annotations

import contextlib
import netrc
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from lightning_mtl.callbacks import PredictionSamples, RunSummary, SparsityMonitor
from lightning_mtl.meta_test import MetaTestOptions, check_meta_test, meta_test
from lightning_mtl.modules import MetaSparsityModule, MultiTaskLightningModule
from lightning_mtl.runs import run_fields, run_name
from lightning_mtl.tasks import TASK_REGISTRY


@dataclass
class RunOptions:
    """Where a run goes and how it is logged.

    Args:
        name: run folder name under `root` (default: tasks, λ, seed and a timestamp).
        root: folder holding the run folders.
        logger: `wandb` (CSV + W&B, offline when no API key is configured) or `csv`.
        wandb_project: W&B project the run lands in.
        group: W&B run group (a sweep's runs share one: its name).
    """

    name: str | None = None
    root: str = "runs"
    logger: Literal["wandb", "csv"] = "wandb"
    wandb_project: str = "lightning-mtl"
    group: str | None = None


class LightningMTLCLI(LightningCLI):
    """LightningCLI with the run folder convention, checkpointing and sparsity callbacks."""

    #: default run folder names end with a timestamp, so that reruns never share a folder
    timestamp_run_names = True

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.link_arguments("model.tasks", "data.init_args.tasks", compute_fn=_task_keys)
        parser.link_arguments(
            "data", "model.targets", compute_fn=lambda data: data.targets, apply_on="instantiate"
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.filename": "best",
            }
        )
        parser.add_lightning_class_args(SparsityMonitor, "sparsity_monitor")
        parser.add_lightning_class_args(PredictionSamples, "samples")
        parser.add_lightning_class_args(RunSummary, "summary")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        fields = run_fields(config.as_dict())
        name = config.run.name or run_name(fields)
        if not config.run.name and self.timestamp_run_names:
            name += time.strftime("_%Y%m%d-%H%M%S")
        run_dir = Path(config.run.root) / name
        if config.trainer.default_root_dir is None:
            config.trainer.default_root_dir = str(run_dir)
        if config.trainer.logger is None:
            config.trainer.logger = _loggers(run_dir, config.run, fields)
        if config.trainer.plugins is None:  # atomic checkpoint writes, clear load errors
            config.trainer.plugins = [
                Namespace(class_path="lightning_mtl.checkpoint_io.AtomicCheckpointIO")
            ]

    def after_fit(self) -> None:
        """Close the W&B run so its file is complete when the command returns."""
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()

    after_validate = after_test = after_predict = after_fit


class CompletionCLI(LightningMTLCLI):
    """`lightning-mtl run`: the run folder is named after the run alone (`run_name`), so running
    the same settings again finds the same folder and resumes or skips it."""

    timestamp_run_names = False


def _task_keys(tasks: Sequence) -> list[str]:
    """Batch keys the datamodule must provide for the model's tasks (a registered task may read
    another task's target, e.g. a foreground task the `seg` labels)."""
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    keys = []
    for task in tasks:
        if isinstance(task, str) and task in TASK_REGISTRY:
            task = TASK_REGISTRY[task](key=task)
        key = task if isinstance(task, str) else task.target_key
        if key not in keys:
            keys.append(key)
    return keys


def _loggers(run_dir: Path, run: Namespace, fields: dict) -> list[Namespace]:
    """CSV always (reports need no W&B; kept across resumes), first so that `trainer.log_dir` is
    the run folder.
    W&B gets the run's `run_fields` as `run.*` config fields to group and compare runs by."""
    loggers = [
        Namespace(
            class_path="lightning_mtl.loggers.ResumableCSVLogger",
            init_args=Namespace(save_dir=str(run_dir), name="", version=""),
        )
    ]
    if run.logger == "wandb":
        loggers.append(
            Namespace(
                class_path="lightning.pytorch.loggers.WandbLogger",
                init_args=Namespace(
                    save_dir=str(run_dir),
                    project=run.wandb_project,
                    name=run_dir.name,
                    offline=wandb_offline(),
                    group=run.group,
                    config={"run": fields},
                ),
            )
        )
    return loggers


def wandb_offline() -> bool:
    """Offline unless W&B credentials exist (WANDB_API_KEY or a netrc entry); WANDB_MODE wins."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
        return netrc.netrc().authenticators(host) is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def build_cli(
    args: Sequence[str],
    cli_class: type[LightningMTLCLI] = LightningMTLCLI,
    model_class: type[MultiTaskLightningModule] = MultiTaskLightningModule,
    datamodule_class: type[LightningDataModule] = LightningDataModule,
    run: bool = True,
) -> LightningMTLCLI:
    """The `lightning-mtl fit` command line (`run=False`: parsed and instantiated, not run)."""
    # the run summary says where the W&B run is and how to sync it; wandb's own banner is noise
    os.environ.setdefault("WANDB_QUIET", "true")
    return cli_class(
        model_class,
        datamodule_class,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        run=run,
        args=list(args),
    )


class MetaCLI(LightningMTLCLI):
    """The fit CLI for MetaSparsityModule plus the `meta_test` options."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(MetaTestOptions, "meta_test")


def _meta(args: Sequence[str]) -> None:
    """Meta-train (MetaSparsityModule on a MetaTaskDataModule), then meta-test; one table."""
    from datamodules.meta import MetaTaskDataModule

    cli = build_cli(args, MetaCLI, MetaSparsityModule, MetaTaskDataModule, run=False)
    options = MetaTestOptions(**vars(cli.config.meta_test))
    plain_data = cli.datamodule.datamodule
    check_meta_test(options, list(cli.model.tasks), plain_data.targets)
    cli.trainer.fit(cli.model, cli.datamodule)
    cli.after_fit()
    trainer = cli.trainer
    out = Path(trainer.log_dir or trainer.default_root_dir) / "meta_test"
    rows = meta_test(cli.model, plain_data, options, out, _placement(cli.config.trainer))
    if trainer.is_global_zero and rows:
        print((out / "meta_test.md").read_text())
        print(f"meta-test tables: {out / 'meta_test.md'}, {out / 'meta_test.csv'}")


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


def _placement(trainer: Namespace) -> dict[str, object]:
    """Where the meta-training ran (accelerator, devices, strategy, precision), for the
    meta-test trainers; a strategy given as a class config stays with Lightning's default."""
    keys = ("accelerator", "devices", "num_nodes", "strategy", "precision")
    return {k: trainer[k] for k in keys if isinstance(trainer[k], str | int | list)}


def _bench(args: Sequence[str]) -> None:
    from lightning_mtl.benchmark import main as bench_main

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


def _run(args: Sequence[str]) -> None:
    from lightning_mtl.runs import run_to_completion

    run_to_completion(list(args))


def _sweep(args: Sequence[str]) -> None:
    """Run a sweep file's grid here, one run after another (resumable)."""
    import argparse

    from lightning_mtl.sweep import load_sweep, run_sweep

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

    from lightning_mtl.reporting import report

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
