"""`lightning-mtl meta`: meta-train λ (MetaSparsityModule on a MetaTaskDataModule), then
meta-test on seen and unseen tasks; one table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from datamodules.meta import MetaTaskDataModule
from lightning_mtl.meta.meta_test import MetaTestOptions, check_meta_test, meta_test
from lightning_mtl.meta.module import MetaSparsityModule
from lightning_mtl.pipelines.fit import LightningMTLCLI, build_cli


class MetaCLI(LightningMTLCLI):
    """The fit CLI for MetaSparsityModule plus the `meta_test` options."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(MetaTestOptions, "meta_test")


def run_meta(args: Sequence[str]) -> Path:
    """Meta-train (MetaSparsityModule on a MetaTaskDataModule), then meta-test; one table.

    Meta-training resumes from the run folder's `checkpoints/last.ckpt` when there is one (a
    run named with `--run.name` and started before). Returns the meta-test folder.
    """
    cli = build_cli(args, MetaCLI, MetaSparsityModule, MetaTaskDataModule, run=False)
    options = MetaTestOptions(**vars(cli.config.meta_test))
    plain_data = cli.datamodule.datamodule
    check_meta_test(options, list(cli.model.tasks), plain_data.targets)
    trainer = cli.trainer
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last) if last.is_file() else None)
    cli.after_fit()
    out = run_dir / "meta_test"
    rows = meta_test(cli.model, plain_data, options, out, _placement(cli.config.trainer))
    if trainer.is_global_zero and rows:
        print((out / "meta_test.md").read_text())
        print(f"meta-test tables: {out / 'meta_test.md'}, {out / 'meta_test.csv'}")
    return out


def _placement(trainer: Namespace) -> dict[str, object]:
    """Where the meta-training ran (accelerator, devices, strategy, precision), for the
    meta-test trainers; a strategy given as a class config stays with Lightning's default."""
    keys = ("accelerator", "devices", "num_nodes", "strategy", "precision")
    return {k: trainer[k] for k in keys if isinstance(trainer[k], str | int | list)}
