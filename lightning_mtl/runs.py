"""What identifies a run, and one run taken to completion.

`run_fields` reads the fields a sweep varies (dataset, tasks, λ, penalty, seed) from a run's
config: W&B gets them as flat config fields to group by, the report groups run folders by them,
and `run_name` names a run folder after them. `run_to_completion` is `lightning-mtl run`: fit
(resuming from the run's last checkpoint), test the best checkpoint, write `result.json`; a run
that has its `result.json` is not run again, so sweeps and pipelines resume where they stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_mtl.cli import LightningMTLCLI

#: written into a run folder when its fit and test are complete
RESULT_FILE = "result.json"


def run_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset, tasks (`seg+depth`), λ (`None` for learned λ), penalty and seed of a run config
    (the `lightning-mtl fit` config as a nested mapping, e.g. a run folder's `config.yaml`)."""
    model = config["model"]
    tasks = "+".join(
        t if isinstance(t, str) else str(t.get("class_path", t)).rsplit(".", 1)[-1]
        for t in model["tasks"]
    )
    lam = model.get("lambda_")
    return {
        "dataset": _dataset(config.get("data")),
        "tasks": tasks,
        "lambda": None if lam is None else float(lam),
        "penalty": model.get("penalty") or "group_lasso",
        "seed": config.get("seed_everything"),
    }


def run_name(fields: Mapping[str, Any]) -> str:
    """`seg+depth_lam1e-06_seed0` (`_l1` after λ for the L1 penalty, `meta` for learned λ)."""
    lam = "meta" if fields["lambda"] is None else f"lam{fields['lambda']:g}"
    penalty = "" if fields["penalty"] == "group_lasso" else f"_{fields['penalty']}"
    return f"{fields['tasks']}_{lam}{penalty}_seed{fields['seed']}"


def _dataset(data: Any) -> str:
    """`NYUv2`, `CelebAMaskHQ`, `Synthetic`, … from the data class path (a meta-task module's
    wrapped datamodule); `-synthetic` when the datamodule synthesizes its root."""
    if not isinstance(data, Mapping):
        return type(data).__name__.removesuffix("DataModule")
    init = data.get("init_args") or {}
    if isinstance(init.get("datamodule"), Mapping):
        return _dataset(init["datamodule"])
    name = str(data.get("class_path", "?")).rsplit(".", 1)[-1].removesuffix("DataModule")
    return f"{name}-synthetic" if init.get("synthesize") else name


def run_to_completion(
    args: list[str], describe: Callable[[LightningMTLCLI], Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """`lightning-mtl fit ARGS`, resumed from the run folder's `checkpoints/last.ckpt` when
    there is one, then `test` of the best checkpoint (the last weights without one); writes
    `result.json` (test metrics, checkpoint, epochs, `run_fields`, plus `describe(cli)`) and
    returns it. A run folder that already has `result.json` is returned as it is."""
    from lightning_mtl.cli import CompletionCLI, build_cli

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


def read_result(run_dir: Path) -> dict[str, Any]:
    """A complete run's `result.json`, or an error saying the run has not completed."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run {run_dir.name} has not completed")
    return json.loads(path.read_text())
