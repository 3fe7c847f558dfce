"""`lightning-mtl run`: one run taken to completion (fit → evaluate → result.json).

Every pipeline trains through `run_to_completion` (run, sweep, LOMT, meta, meta-study): a run
folder that is complete (`runs.is_complete`) is not run again, and a partial one resumes from its
last checkpoint, so sweeps and pipelines resume where they stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule

from lightning_mtl.modules import MultiTaskLightningModule, MultiTaskModuleBase
from lightning_mtl.pipelines.fit import CompletionCLI, LightningMTLCLI, build_cli
from lightning_mtl.runs import RESULT_FILE, is_complete, run_fields

#: what a hook adds to a run's `result.json`, read from the fitted CLI
Describe = Callable[[LightningMTLCLI], Mapping[str, Any]]


def test_best_checkpoint(cli: LightningMTLCLI) -> dict[str, Any]:
    """`test` of the best checkpoint (the last weights without one): the checkpoint, the test
    metrics and the tasks' main metrics and directions."""
    trainer = cli.trainer
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    metrics = trainer.test(cli.model, cli.datamodule, ckpt_path=checkpoint, verbose=False)[0]
    tasks = cli.model.tasks
    return {
        "checkpoint": checkpoint,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "main_metrics": {k: t.main_metric for k, t in tasks.items()},
        "higher_is_better": {k: dict(t.higher_is_better) for k, t in tasks.items()},
    }


def run_to_completion(
    config: Mapping[str, Any] | Sequence[str],
    overrides: Sequence[str] = (),
    evaluate: Describe | None = test_best_checkpoint,
    describe: Describe | None = None,
    cli_class: type[LightningMTLCLI] = CompletionCLI,
    model_class: type[MultiTaskModuleBase] = MultiTaskLightningModule,
    datamodule_class: type[LightningDataModule] = LightningDataModule,
) -> Path:
    """Fit the run, resumed from its folder's `checkpoints/last.ckpt` when there is one, then
    `evaluate(cli)` (loggers still open), finish the loggers and `describe(cli)`; writes
    `result.json` (`run_fields`, epochs and what the hooks return) and returns the run folder.
    A complete run folder is returned as it is.

    `config`: the fit config as a mapping (what the CLI's parser produces; a `config` entry
    lists config files), with command-line `overrides` on top; or the `lightning-mtl run`
    command line.
    """
    cli = build_cli(config, cli_class, model_class, datamodule_class, False, overrides)
    trainer = cli.trainer
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)
    if is_complete(run_dir):
        print(f"complete, skipped: {run_dir}")
        return run_dir
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last) if last.is_file() else None)
    result = {
        **run_fields(cli.config.as_dict()),
        "epochs": trainer.current_epoch,
        **(evaluate(cli) if evaluate else {}),
    }
    cli.after_fit()
    result.update(describe(cli) if describe else {})
    if trainer.is_global_zero:
        tmp = run_dir / f".{RESULT_FILE}.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, run_dir / RESULT_FILE)
    return run_dir
