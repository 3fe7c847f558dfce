"""LOMT stage 1 → stage 2: per-task sparsity profiles, the tap-selection rule and its spy plot.

Stage 1 trains one group-sparse single-task model per task and seed; each run's
`sparsity_stats(...).layers` gives every conv's fraction of live input-channel groups. A conv is
*active* for a task when that fraction is strictly above `threshold` (default 1%) in every seed.
The task's decoder tap is then picked by `select_tap` (rule in its docstring), or named by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lightning_mtl.reporting.figures import profile_spy_plot
from lightning_mtl.sparsity.stats import SparsityStats

DEFAULT_THRESHOLD = 0.01
DEFAULT_WINDOW = 2


@dataclass
class TaskProfile:
    """Per-conv live-group fractions of one task's single-task sparse runs, one list per seed.

    `architecture` names the backbone the layer names belong to (e.g. `{"backbone": "resnet50",
    "backbone_options": {...}}`); it is stored in its JSON form (tuples become lists) so that a
    profile equals itself after `save`/`load` and compares with a stage-2 config either way.
    Construction validates everything `load` does: layer names unique and non-empty, at least one
    seed, one fraction per layer per seed, each in [0, 1].
    """

    task: str
    architecture: dict[str, Any]
    layers: list[str]
    seeds: dict[int, list[float]]

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a non-empty string, got {self.task!r}")
        try:
            self.architecture = json.loads(json.dumps(dict(self.architecture)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"architecture must be a JSON-serializable mapping: {err}") from err
        self.layers = list(self.layers)
        if not self.layers:
            raise ValueError("profile has no layers")
        if not all(isinstance(name, str) for name in self.layers):
            raise ValueError(f"layer names must be strings, got {self.layers!r}")
        duplicates = sorted({name for name in self.layers if self.layers.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate layer names: {duplicates}")
        if not self.seeds:
            raise ValueError("profile has no seeds")
        seeds: dict[int, list[float]] = {}
        for seed, fractions in self.seeds.items():
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError(f"seed {seed!r} is not an integer")
            fractions = list(fractions)
            if len(fractions) != len(self.layers):
                raise ValueError(
                    f"seed {seed} has {len(fractions)} fractions but there are "
                    f"{len(self.layers)} layers"
                )
            for name, f in zip(self.layers, fractions, strict=True):
                if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
                    raise ValueError(f"seed {seed}, layer {name}: fraction {f!r} is not in [0, 1]")
            seeds[seed] = [float(f) for f in fractions]
        self.seeds = seeds

    @classmethod
    def from_stats(
        cls,
        task: str,
        architecture: Mapping[str, Any],
        runs: Mapping[int, SparsityStats | Mapping[str, float]],
    ) -> TaskProfile:
        """The profile of seed → `sparsity_stats(...)` (or its `.layers`) of one task's runs.

        Every run must list the same convs in the same order: they are runs of one architecture.
        """
        profiles = {
            seed: run.layers if isinstance(run, SparsityStats) else dict(run)
            for seed, run in runs.items()
        }
        if not profiles:
            raise ValueError(f"task {task}: no runs given")
        first_seed, first = next(iter(profiles.items()))
        layers = list(first)
        for seed, layer_fractions in profiles.items():
            if list(layer_fractions) != layers:
                raise ValueError(
                    f"task {task}: seed {seed} and seed {first_seed} have different convs: "
                    + _difference(list(layer_fractions), layers)
                )
        seeds = {seed: list(fractions.values()) for seed, fractions in profiles.items()}
        return cls(task, dict(architecture), layers, seeds)

    def save(self, path: str | Path) -> None:
        """Write the profile as indented JSON, one record per conv in forward order.

        Each record holds the conv's live fractions (aligned with `"seeds"`) and, for a reader,
        `"active"` at the default 1% threshold (named in `"threshold"`); `load` recomputes
        activity instead of trusting these two fields.
        """
        active = active_layers(self)
        doc = {
            "task": self.task,
            "architecture": self.architecture,
            "seeds": list(self.seeds),
            "threshold": DEFAULT_THRESHOLD,
            "layers": [
                {
                    "name": name,
                    "live": [fractions[i] for fractions in self.seeds.values()],
                    "active": active[i],
                }
                for i, name in enumerate(self.layers)
            ],
        }
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TaskProfile:
        """Read a profile written by `save`; any problem is a ValueError naming the file."""
        try:
            doc = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON file ({err})") from err
        try:
            return cls._from_json(doc)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    @classmethod
    def _from_json(cls, doc: Any) -> TaskProfile:
        _require_keys(doc, ("task", "architecture", "seeds", "layers"), "the profile")
        if not isinstance(doc["seeds"], list) or not isinstance(doc["layers"], list):
            raise ValueError('"seeds" and "layers" must be lists')
        if not isinstance(doc["architecture"], dict):
            raise ValueError('"architecture" must be an object')
        for i, record in enumerate(doc["layers"]):
            _require_keys(record, ("name", "live"), f"layer record {i}")
            if not isinstance(record["live"], list) or len(record["live"]) != len(doc["seeds"]):
                raise ValueError(
                    f'layer {record["name"]}: "live" must list one fraction per seed '
                    f"({len(doc['seeds'])}), got {record['live']!r}"
                )
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in doc["seeds"]):
            raise ValueError(f'"seeds" must be integers, got {doc["seeds"]}')
        if len(set(doc["seeds"])) != len(doc["seeds"]):
            raise ValueError(f"duplicate seeds: {doc['seeds']}")
        seeds = {
            seed: [record["live"][j] for record in doc["layers"]]
            for j, seed in enumerate(doc["seeds"])
        }
        layers = [record["name"] for record in doc["layers"]]
        return cls(doc["task"], doc["architecture"], layers, seeds)


def active_layers(profile: TaskProfile, threshold: float = DEFAULT_THRESHOLD) -> list[bool]:
    """Per layer (forward order): live fraction strictly above `threshold` in every seed.

    A fraction exactly at the threshold is inactive, and so is a conv that any seed pruned:
    seeds that disagree do not make a conv necessary to the task.
    """
    _check_threshold(threshold)
    return [
        all(fractions[i] > threshold for fractions in profile.seeds.values())
        for i in range(len(profile.layers))
    ]


def select_tap(
    profile: TaskProfile, threshold: float = DEFAULT_THRESHOLD, window: int = DEFAULT_WINDOW
) -> str:
    """The conv the task's decoder should read: the last active conv before its features die.

    Convs are scanned in forward order. The tap is the last active conv before the first run of
    `window` consecutive inactive convs that follows an active conv; shorter runs (up to
    `window - 1`) are pruning noise and do not stop the scan. Inactive convs before the first
    active one never open a window, so a pruned stem still selects a tap. Without such a run the
    tap is the network's last active conv (the last conv when all are active). No active conv at
    all is a ValueError: there is nothing to read.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    active = active_layers(profile, threshold)
    if not any(active):
        raise ValueError(
            f"task {profile.task}: no conv is active at threshold {threshold} (live fraction "
            f"> {threshold} in every one of seeds {list(profile.seeds)}); rerun stage 1 with a "
            "lower λ, lower the threshold, or override the tap by name"
        )
    tap: str | None = None
    inactive_run = 0
    for name, is_active in zip(profile.layers, active, strict=True):
        if is_active:
            tap, inactive_run = name, 0
        elif tap is not None:
            inactive_run += 1
            if inactive_run == window:
                return tap
    assert tap is not None  # some conv is active
    return tap


def select_taps(
    profiles: Mapping[str, TaskProfile],
    tasks: Sequence[str],
    layers: Sequence[str],
    architecture: Mapping[str, Any],
    threshold: float = DEFAULT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Task → tap for the stage-2 model whose backbone is `architecture` with convs `layers`.

    An override (a conv name) wins and its task's profile, if any, is not consulted; every other
    task needs a profile (task → profile; extra profiles are ignored) of exactly this
    architecture and conv list, and gets `select_tap(profile, threshold, window)`. Overrides for
    tasks not in `tasks` and names that are not convs of the model are errors, not ignored.
    """
    overrides = dict(overrides or {})
    layers = list(layers)
    architecture = json.loads(json.dumps(dict(architecture)))
    unknown_tasks = [task for task in overrides if task not in tasks]
    if unknown_tasks:
        raise ValueError(
            f"tap overrides for tasks {unknown_tasks} not in the model's tasks {list(tasks)}"
        )
    for task, name in overrides.items():
        if name not in layers:
            raise ValueError(
                f"tap override {name!r} for task {task} is not a conv of the stage-2 model; "
                f"valid names: {', '.join(layers)}"
            )
    taps: dict[str, str] = {}
    for task in tasks:
        if task in overrides:
            taps[task] = overrides[task]
            continue
        if task not in profiles:
            raise ValueError(
                f"task {task} has neither a stage-1 profile nor a tap override; "
                f"profiles present: {sorted(profiles)}"
            )
        profile = profiles[task]
        if profile.task != task:
            raise ValueError(
                f"the profile given for task {task} is the profile of task {profile.task}"
            )
        if profile.architecture != architecture:
            raise ValueError(
                f"profile of task {task} was made with backbone {json.dumps(profile.architecture)} "
                f"but the stage-2 model is {json.dumps(architecture)}"
            )
        if profile.layers != layers:
            raise ValueError(
                f"profile of task {task} was made with other convs than the stage-2 model has: "
                + _difference(profile.layers, layers)
            )
        taps[task] = select_tap(profile, threshold, window)
    return taps


def profile_plot(
    profile: TaskProfile, tap: str | None = None, threshold: float = DEFAULT_THRESHOLD
) -> Figure:
    """Spy plot of one task's profile (`reporting.figures.profile_spy_plot`): one row per conv,
    one column per seed, the convs inactive at `threshold` in red, `tap` (if given) boxed."""
    active = active_layers(profile, threshold)
    if tap is not None and tap not in profile.layers:
        raise ValueError(f"tap {tap!r} is not a conv of the profile of task {profile.task}")
    return profile_spy_plot(profile.task, profile.layers, profile.seeds, active, threshold, tap)


def _check_threshold(threshold: float) -> None:
    if not 0 <= threshold < 1:  # also rejects NaN
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")


def _require_keys(doc: Any, keys: Sequence[str], what: str) -> None:
    if not isinstance(doc, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(doc).__name__}")
    missing = [key for key in keys if key not in doc]
    if missing:
        raise ValueError(f"{what} is missing keys {missing}")


def _difference(a: Sequence[str], b: Sequence[str]) -> str:
    """Where two conv lists part, in a line (lists run to ~50 names)."""
    shorter = min(len(a), len(b))
    i = next((i for i in range(shorter) if a[i] != b[i]), shorter)
    x, y = (repr(names[i]) if i < len(names) else "(end)" for names in (a, b))
    return f"{len(a)} vs {len(b)} convs, first difference at position {i}: {x} vs {y}"
