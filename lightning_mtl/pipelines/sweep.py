"""Sweeps: one W&B grid-sweep file (`experiments/sweeps/*.yaml`) serves both ways of running it.

`wandb sweep FILE` + `wandb agent ID` hand the grid to W&B; `lightning-mtl sweep FILE`
(`make sweep GRID=FILE`) expands the same grid here and takes each run to completion one after
another (`lightning_mtl.pipelines.run.run_to_completion`), with the arguments formatted by W&B's
own agent code. Either way every run is `lightning-mtl run ARGS`: its folder `ROOT/run_name` is
named after its tasks, λ, penalty and seed, so a rerun skips complete runs and resumes partial
ones, and the report groups them.

A sweep file is a W&B sweep configuration with `method: grid`, a `command` of the form
`[${env}, lightning-mtl, run, --config, BASE.yaml, --run.root, ROOT, …, ${args}]`, and
`parameters` (`values` or `value`) that vary only the run-identifying keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: the keys a sweep may vary: they name the run folder (`run_name`) so that reruns find it
VARIED_KEYS: tuple[str, ...] = ("model.tasks", "model.lambda_", "model.penalty", "seed_everything")
COMMAND_HEAD: tuple[str, ...] = ("${env}", "lightning-mtl", "run")


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: its name, the `lightning-mtl run` arguments every run shares, and
    the parameter grid (dotted key → values, in file order)."""

    name: str
    args: tuple[str, ...]
    parameters: dict[str, tuple[Any, ...]]

    @property
    def root(self) -> Path:
        """The folder holding the sweep's run folders (the command's `--run.root`)."""
        return Path(self.args[self.args.index("--run.root") + 1])

    def __len__(self) -> int:
        count = 1
        for values in self.parameters.values():
            count *= len(values)
        return count


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; errors name the file and what is expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}

    def fail(message: str) -> ValueError:
        return ValueError(f"{path}: {message}")

    if spec.get("method") != "grid":
        raise fail(f"method must be `grid` (got {spec.get('method')!r})")
    command = [str(c) for c in spec.get("command") or []]
    if tuple(command[:3]) != COMMAND_HEAD or command[-1:] != ["${args}"]:
        raise fail(f"command must be [{', '.join(COMMAND_HEAD)}, …, ${{args}}], got {command}")
    args = tuple(command[3:-1])
    for flag in ("--config", "--run.root"):
        if flag not in args[:-1]:
            raise fail(f"command must give {flag} (every run's base config and folder)")
    raw = spec.get("parameters")
    if not isinstance(raw, Mapping) or not raw:
        raise fail("parameters must map dotted config keys to {values: [...]} or {value: ...}")
    parameters = {}
    for key, entry in raw.items():
        if key not in VARIED_KEYS:
            raise fail(
                f"parameter {key!r} cannot be swept: run folders are named after "
                f"{list(VARIED_KEYS)} only; fix other settings in the command instead"
            )
        if not isinstance(entry, Mapping) or ("values" in entry) == ("value" in entry):
            raise fail(f"parameter {key!r} needs exactly one of `values: [...]` or `value: x`")
        values = tuple(entry["values"]) if "values" in entry else (entry["value"],)
        if not values:
            raise fail(f"parameter {key!r} has no values")
        parameters[key] = values
    return Sweep(name=str(spec.get("name") or path.stem), args=args, parameters=parameters)


def grid(sweep: Sweep) -> Iterator[list[str]]:
    """The `lightning-mtl run` arguments of every grid point, formatted as W&B's agent
    formats `${args}` (`--key=value`)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    keys = list(sweep.parameters)
    for values in itertools.product(*sweep.parameters.values()):
        point = {k: {"value": v} for k, v in zip(keys, values, strict=True)}
        yield [*sweep.args, *create_sweep_command_args({"args": point})["args"]]


def run_sweep(sweep: Sweep) -> list[str]:
    """Take every run of the grid to completion, one after another; a run that fails is
    reported and the sweep goes on. Returns the failed runs' arguments (empty: all complete)."""
    from lightning_mtl.pipelines.run import run_to_completion

    failed = []
    for i, args in enumerate(grid(sweep), 1):
        print(
            f"[sweep {sweep.name}] run {i}/{len(sweep)}: {' '.join(args[-len(sweep.parameters) :])}"
        )
        try:
            run_to_completion(args)
        except Exception as error:  # one broken run must not stop the grid
            print(f"[sweep {sweep.name}] run {i} failed: {type(error).__name__}: {error}")
            failed.append(" ".join(args))
    return failed
