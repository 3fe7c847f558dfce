"""Reading run folders back: settings from `config.yaml`, numbers from the CSV log.

A run folder (`lightning-mtl run`, or any `lightning-mtl fit` folder) holds `config.yaml` (the
full config LightningCLI saved), `metrics.csv` (CSVLogger), `checkpoints/` and, when its fit
and test completed, `result.json`. `read_runs` returns the complete runs and, by folder name,
why every other folder was left out: nothing is averaged from a partial log.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_mtl.runs import RESULT_FILE, run_fields

SPLITS: tuple[str, ...] = ("test", "val")


@dataclass
class RunLog:
    """One complete run as the report sees it.

    Attributes:
        folder: the run folder.
        fields: `run_fields` of its config (dataset, tasks, lambda, penalty, seed).
        epochs: per validation epoch, every value logged for it (val/*, sparsity/*, lambda).
        metrics: the split's task metrics (`{split}/{task}/{metric}`, losses left out).
        main_metrics: task → its main metric; higher_is_better: task → metric → direction.
        checkpoint: the checkpoint the test split evaluated (best by val/loss), if kept.
        image_size: the data's (H, W), when the config gives one.
    """

    folder: Path
    fields: dict[str, Any]
    epochs: dict[int, dict[str, float]]
    metrics: dict[str, float]
    main_metrics: dict[str, str]
    higher_is_better: dict[str, dict[str, bool]]
    checkpoint: Path | None = None
    image_size: tuple[int, int] | None = None
    best_epoch: int = field(init=False)

    def __post_init__(self) -> None:
        losses = {e: v["val/loss"] for e, v in self.epochs.items() if "val/loss" in v}
        # the first minimum, as ModelCheckpoint(monitor="val/loss", mode="min") keeps it
        self.best_epoch = min(losses, key=lambda e: (losses[e], e))

    @property
    def tasks(self) -> list[str]:
        return self.fields["tasks"].split("+")

    def at_best(self, key: str) -> float:
        """A value logged at the best validation epoch (the weights the test split saw)."""
        return self.epochs[self.best_epoch][key]

    def layer_fractions(self) -> dict[str, float]:
        """Live-group fraction per grouped conv (forward order) at the best epoch."""
        prefix = "sparsity/layer/"
        row = self.epochs[self.best_epoch]
        return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


def read_runs(root: Path, split: str = "test") -> tuple[list[RunLog], dict[str, str]]:
    """Every run folder directly under `root`: the complete ones, and folder → reason for the
    others (missing/partial files, missing metrics)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of runs")
    runs, left_out = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            runs.append(read_run(folder, split))
        except RunLogError as error:
            left_out[folder.name] = str(error)
    return runs, left_out


class RunLogError(ValueError):
    """Why a run folder cannot be reported."""


def read_run(folder: Path, split: str = "test") -> RunLog:
    """One run folder, or a RunLogError saying which file or value is missing."""
    if not (folder / "config.yaml").is_file():
        raise RunLogError("no config.yaml: not a lightning-mtl run folder")
    if not (folder / RESULT_FILE).is_file():
        raise RunLogError(
            f"incomplete: no {RESULT_FILE} (the run did not finish fit and test; rerunning "
            "the sweep resumes it from its last checkpoint)"
        )
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        fields = run_fields(config)
        result = json.loads((folder / RESULT_FILE).read_text())
        main_metrics, higher = result["main_metrics"], result["higher_is_better"]
    except (yaml.YAMLError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise RunLogError(f"unreadable config.yaml or {RESULT_FILE}: {error!r}") from error
    rows = _read_csv(folder / "metrics.csv")
    epochs: dict[int, dict[str, float]] = {}
    for row in rows:  # later rows win: a resumed run logs its epoch again
        if "val/loss" in row or any(k.startswith("sparsity/") for k in row):
            epochs.setdefault(int(row["epoch"]), {}).update(row)
    if not any("val/loss" in values for values in epochs.values()):
        raise RunLogError("metrics.csv has no validation epoch (no val/loss values)")
    if not any("sparsity/group_pct" in values for values in epochs.values()):
        raise RunLogError("metrics.csv has no sparsity/group_pct values (no SparsityMonitor?)")
    metrics: dict[str, float] = {}
    if split == "test":
        for row in rows:
            metrics.update({k: v for k, v in row.items() if k.startswith("test/")})
    log = RunLog(folder, fields, epochs, metrics, main_metrics, higher)
    if split == "val":
        log.metrics = {k: v for k, v in epochs[log.best_epoch].items() if k.startswith("val/")}
    log.metrics = {k: v for k, v in log.metrics.items() if not k.endswith("/loss")}
    for key in ("sparsity/group_pct", "sparsity/param_pct"):
        if key not in epochs[log.best_epoch]:
            raise RunLogError(f"metrics.csv has no {key} at the best epoch {log.best_epoch}")
    for task in log.tasks:
        if f"{split}/{task}/{main_metrics.get(task)}" not in log.metrics:
            raise RunLogError(
                f"metrics.csv has no {split}/{task}/{main_metrics.get(task)} value"
                + (" (was the test split run?)" if split == "test" else "")
            )
    checkpoint = result.get("checkpoint")
    log.checkpoint = Path(checkpoint) if checkpoint and Path(checkpoint).is_file() else None
    log.image_size = _image_size(config.get("data"))
    return log


def _image_size(data: Any) -> tuple[int, int] | None:
    """`data.init_args.image_size` (of the wrapped datamodule for meta-task data)."""
    init = data.get("init_args") or {} if isinstance(data, dict) else {}
    if isinstance(init.get("datamodule"), dict):
        return _image_size(init["datamodule"])
    size = init.get("image_size")
    return (int(size[0]), int(size[1])) if size else None


def _read_csv(path: Path) -> list[dict[str, float]]:
    """The CSV log's rows with their non-empty cells as floats (`epoch`, `step` included)."""
    if not path.is_file():
        raise RunLogError("no metrics.csv (the run was not logged with the CSV logger)")
    rows = []
    with open(path, newline="") as file:
        for line, row in enumerate(csv.DictReader(file), start=2):
            try:
                rows.append({k: float(v) for k, v in row.items() if k and v not in ("", None)})
            except (TypeError, ValueError) as error:
                raise RunLogError(f"metrics.csv line {line} is malformed: {error}") from error
            if "epoch" not in rows[-1] or math.isnan(rows[-1]["epoch"]):
                raise RunLogError(f"metrics.csv line {line} has no epoch")
    return rows
