"""What identifies a run, and what a run taken to completion wrote.

`run_fields` reads the fields a sweep varies (dataset, tasks, λ, penalty, seed) from a run's
config: W&B gets them as flat config fields to group by, the report groups run folders by them,
and `run_name` names a run folder after them; `read_result` reads what a complete run wrote
(`lightning_mtl.pipelines.run` writes it). Plain Python: reports read runs without training code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: written into a run folder when it is complete (`lightning_mtl.pipelines.run`)
RESULT_FILE = "result.json"
#: what marked a complete `lightning-mtl meta` run before it wrote `result.json`
LEGACY_RESULT_FILES: tuple[str, ...] = ("meta_test/meta_test.json",)


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


def is_complete(run_dir: Path) -> bool:
    """Whether the run folder holds a complete run (`result.json`, or a legacy marker)."""
    return any((run_dir / name).is_file() for name in (RESULT_FILE, *LEGACY_RESULT_FILES))


def read_result(run_dir: Path) -> dict[str, Any]:
    """A complete run's `result.json`, or an error saying the run has not completed."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run {run_dir.name} has not completed")
    return json.loads(path.read_text())
