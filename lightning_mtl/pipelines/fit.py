"""The training command line: LightningCLI with the run-folder convention, checkpointing, the
sparsity callbacks and the loggers. `lightning-mtl fit|validate|test|predict` is this CLI, and the
pipelines (run, sweep, LOMT, meta) build their trainings with `build_cli`."""

from __future__ import annotations

import netrc
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from lightning_mtl.callbacks import PredictionSamples, RunSummary, SparsityMonitor
from lightning_mtl.modules import MultiTaskLightningModule, MultiTaskModuleBase
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

    def __init__(self, *args: Any, overrides: Sequence[str] = (), **kwargs: Any) -> None:
        self.overrides = list(overrides)
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """A command line, or a config mapping as the parser produces it: its `config` entry
        (config files) is read first, then its options; `overrides` (command-line options, e.g.
        a user's on top of a pipeline's settings) go last."""
        if not isinstance(args, Mapping):
            super().parse_arguments(parser, args)
            return
        settings = dict(args)
        files = settings.pop("config", None) or []
        config = parser.parse_args([a for file in files for a in ("--config", str(file))])
        config = parser.parse_object(settings, cfg_base=config)
        self.config = parser.parse_args(self.overrides, namespace=config)

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
        """Finish the W&B run when the job ends. W&B's service completes the offline run file
        moments later (on a loaded machine after `finish()` has returned); the process's exit
        waits for it, so the file is complete when the command has exited."""
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
    args: Sequence[str] | Mapping[str, Any],
    cli_class: type[LightningMTLCLI] = LightningMTLCLI,
    model_class: type[MultiTaskModuleBase] = MultiTaskLightningModule,
    datamodule_class: type[LightningDataModule] = LightningDataModule,
    run: bool = True,
    overrides: Sequence[str] = (),
) -> LightningMTLCLI:
    """The `lightning-mtl fit` command line (`run=False`: parsed and instantiated, not run).

    `args`: a command line, or a config mapping as the parser produces it (nested options; a
    `config` entry lists config files) with command-line `overrides` on top."""
    # the run summary says where the W&B run is and how to sync it; wandb's own banner is noise
    os.environ.setdefault("WANDB_QUIET", "true")
    return cli_class(
        model_class,
        datamodule_class,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        run=run,
        args=dict(args) if isinstance(args, Mapping) else list(args),
        overrides=overrides,
    )
