"""`lightning-mtl run`: one run taken to completion (fit → test the best checkpoint → result.json).

A run folder that already has its `result.json` is not run again, and a partial one resumes from
its last checkpoint, so sweeps and pipelines resume where they stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning_mtl.pipelines.fit import CompletionCLI, LightningMTLCLI, build_cli
from lightning_mtl.runs import RESULT_FILE, read_result, run_fields


def run_to_completion(
    args: list[str], describe: Callable[[LightningMTLCLI], Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """`lightning-mtl fit ARGS`, resumed from the run folder's `checkpoints/last.ckpt` when
    there is one, then `test` of the best checkpoint (the last weights without one); writes
    `result.json` (test metrics, checkpoint, epochs, `run_fields`, plus `describe(cli)`) and
    returns it. A run folder that already has `result.json` is returned as it is."""
    cli = build_cli(args, CompletionCLI, run=False)
    trainer = cli.trainer
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)
    if (run_dir / RESULT_FILE).is_file():
        print(f"complete, skipped: {run_dir}")
        return read_result(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last) if last.is_file() else None)
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    metrics = trainer.test(cli.model, cli.datamodule, ckpt_path=checkpoint, verbose=False)[0]
    cli.after_fit()
    tasks = cli.model.tasks
    result = {
        **run_fields(cli.config.as_dict()),
        "epochs": trainer.current_epoch,
        "checkpoint": checkpoint,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "main_metrics": {k: t.main_metric for k, t in tasks.items()},
        "higher_is_better": {k: dict(t.higher_is_better) for k, t in tasks.items()},
        **(describe(cli) if describe else {}),
    }
    if trainer.is_global_zero:
        tmp = run_dir / f".{RESULT_FILE}.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, run_dir / RESULT_FILE)
    return result
