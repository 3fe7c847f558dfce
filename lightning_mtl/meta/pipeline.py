"""`lightning-mtl meta`: meta-train λ (MetaSparsityModule on a MetaTaskDataModule), then
meta-test on seen and unseen tasks; one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from datamodules.meta import MetaTaskDataModule
from lightning_mtl.meta.meta_test import (
    META_TEST_RESULT,
    MetaTestOptions,
    check_meta_test,
    meta_test,
)
from lightning_mtl.meta.module import MetaSparsityModule
from lightning_mtl.pipelines.fit import LightningMTLCLI
from lightning_mtl.pipelines.run import run_to_completion


class MetaCLI(LightningMTLCLI):
    """The fit CLI for MetaSparsityModule plus the `meta_test` options (checked against the
    model's tasks and the data's targets before anything trains)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(MetaTestOptions, "meta_test")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        options = MetaTestOptions(**vars(self.config.meta_test))
        check_meta_test(options, list(self.model.tasks), self.datamodule.datamodule.targets)


def run_meta(config: Mapping[str, Any] | Sequence[str], overrides: Sequence[str] = ()) -> Path:
    """Meta-train (MetaSparsityModule on a MetaTaskDataModule), then meta-test; one table.

    A run taken to completion (`run_to_completion`): meta-training resumes from the run folder's
    `checkpoints/last.ckpt` (a run named with `--run.name` and started before) and a complete
    run is not run again. Returns the meta-test folder.
    """
    run_dir = run_to_completion(
        config,
        overrides,
        evaluate=None,
        describe=_meta_test,
        cli_class=MetaCLI,
        model_class=MetaSparsityModule,
        datamodule_class=MetaTaskDataModule,
    )
    return run_dir / "meta_test"


def _meta_test(cli: LightningMTLCLI) -> dict[str, Any]:
    """Meta-test the meta-trained λ on seen and unseen tasks into the run's `meta_test/`."""
    options = MetaTestOptions(**vars(cli.config.meta_test))
    trainer = cli.trainer
    out = Path(trainer.log_dir or trainer.default_root_dir) / "meta_test"
    rows = meta_test(
        cli.model, cli.datamodule.datamodule, options, out, _placement(cli.config.trainer)
    )
    if trainer.is_global_zero and rows:
        print((out / "meta_test.md").read_text())
        print(f"meta-test tables: {out / 'meta_test.md'}, {out / 'meta_test.csv'}")
    return {"meta_test": str(out / META_TEST_RESULT)}


def _placement(trainer: Namespace) -> dict[str, object]:
    """Where the meta-training ran (accelerator, devices, strategy, precision), for the
    meta-test trainers; a strategy given as a class config stays with Lightning's default."""
    keys = ("accelerator", "devices", "num_nodes", "strategy", "precision")
    return {k: trainer[k] for k in keys if isinstance(trainer[k], str | int | list)}
