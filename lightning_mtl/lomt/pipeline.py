"""LOMT end to end: single-task sparse runs → tap selection → LOMT vs conventional, one table.

Every training run is a `lightning-mtl fit` of the same base config with a few overrides, in
its own run folder with a `result.json` written when it is complete; a rerun skips complete
runs, so an interrupted pipeline resumes where it stopped.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from lightning_mtl.benchmarks.timing import latency_ms
from lightning_mtl.lomt.selection import TaskProfile, profile_plot, select_taps
from lightning_mtl.models.backbone import build_backbone
from lightning_mtl.modules import MultiTaskLightningModule
from lightning_mtl.pipelines.fit import LightningMTLCLI, build_cli
from lightning_mtl.pipelines.run import run_to_completion
from lightning_mtl.reporting.figures import save_figure
from lightning_mtl.reporting.tables import delta_m
from lightning_mtl.runs import read_result
from lightning_mtl.sparsity import macs_and_params, sparsity_stats
from lightning_mtl.tables import markdown_table, write_csv

STAGES: tuple[str, ...] = ("stage1", "select", "stage2")


@dataclass
class Stage1Options:
    """Single-task group-sparse runs, one per task and seed.

    Args:
        lambda_: the group-lasso λ of these runs.
        args: further `lightning-mtl fit` arguments for them (e.g. `--trainer.max_epochs 4`).
    """

    lambda_: float = 1e-3
    args: list[str] = field(default_factory=list)


@dataclass
class SelectionOptions:
    """The tap rule (see `lightning_mtl.lomt.select_tap`) and overrides by task.

    Args:
        threshold: a conv is active when more than this fraction of its groups is live in
            every seed.
        window: the tap is the last active conv before the first `window` inactive convs.
        taps: task → conv name, overriding the rule (the authors' reference taps, say).
    """

    threshold: float = 0.01
    window: int = 2
    taps: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage2Options:
    """LOMT and conventional runs, dense, on every combination and seed.

    Args:
        tap_output: `conv` (the tap conv's raw output, as the authors) or `block` (its
            residual block's output).
        args: further `lightning-mtl fit` arguments for these runs.
        latency_rounds: alternating timing rounds of the two models' inference latency.
    """

    tap_output: Literal["conv", "block"] = "conv"
    args: list[str] = field(default_factory=list)
    latency_rounds: int = 5


@dataclass
class LOMTOptions:
    """What `lightning-mtl lomt` runs.

    Args:
        base_config: the training config every run starts from (model, data, trainer).
        tasks: the stage-1 tasks (each gets single-task sparse runs and a profile).
        combinations: the stage-2 task combinations.
        seeds: seeds of every stage-1 and stage-2 run.
        root: the folder holding the runs, profiles, stage-2 config and comparison.
        logger: `csv`, or `wandb` (CSV + W&B) for every run.
        stages: which stages to run (a later stage reads what the earlier ones wrote).
        args: `lightning-mtl fit` arguments for every run (e.g. `--data.init_args.root DIR`).
    """

    base_config: str
    tasks: list[str]
    combinations: list[list[str]]
    seeds: list[int] = field(default_factory=lambda: [0])
    root: str = "runs/lomt"
    logger: Literal["csv", "wandb"] = "csv"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    args: list[str] = field(default_factory=list)
    stage1: Stage1Options = field(default_factory=Stage1Options)
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    stage2: Stage2Options = field(default_factory=Stage2Options)


def check_options(options: LOMTOptions) -> None:
    """Fail before anything trains: unknown stages, no seeds, a combination task that has
    neither a stage-1 run nor an override."""
    unknown = [s for s in options.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; the stages are {list(STAGES)}")
    if not options.seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if not options.combinations or not all(options.combinations):
        raise ValueError(f"combinations must be non-empty task lists, got {options.combinations}")
    covered = set(options.tasks) | set(options.selection.taps)
    for combination in options.combinations:
        missing = [t for t in combination if t not in covered]
        if missing:
            raise ValueError(
                f"combination {combination} has tasks {missing} without a profile: add them to "
                f"tasks (stage 1 profiles them) or give their tap in selection.taps"
            )
    if not Path(options.base_config).is_file():
        raise ValueError(f"base_config {options.base_config!r} is not a file")


def run_pipeline(options: LOMTOptions) -> list[dict[str, Any]]:
    """Run the requested stages; return the comparison rows (empty without stage 2)."""
    check_options(options)
    root = Path(options.root)
    if "stage1" in options.stages:
        for task in options.tasks:
            for seed in options.seeds:
                _train(options, root / "stage1" / f"{task}_seed{seed}", [task], seed, stage1=True)
        write_profiles(options, root)
    if "select" in options.stages:
        select(options, root)
    if "stage2" not in options.stages:
        return []
    taps = yaml.safe_load((root / "stage2.yaml").read_text())["model"]["taps"]
    for combination in options.combinations:
        for seed in options.seeds:
            for kind in ("conventional", "lomt"):
                name = f"{kind}_{'+'.join(combination)}_seed{seed}"
                run_taps = {t: taps[t] for t in combination} if kind == "lomt" else None
                _train(options, root / "stage2" / name, combination, seed, taps=run_taps)
    rows = compare(options, root)
    write_comparison(rows, root)
    return rows


def write_profiles(options: LOMTOptions, root: Path) -> dict[str, TaskProfile]:
    """Per task: `profiles/{task}.json` (live-group fraction per conv and seed) and `.png`."""
    profiles = {}
    for task in options.tasks:
        results = {s: read_result(root / "stage1" / f"{task}_seed{s}") for s in options.seeds}
        first = results[options.seeds[0]]
        layers = {seed: r["layers"] for seed, r in results.items()}
        profile = TaskProfile.from_stats(task, first["architecture"], layers)
        path = root / "profiles" / f"{task}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.save(path)
        profiles[task] = profile
    return profiles


def select(options: LOMTOptions, root: Path) -> dict[str, str]:
    """Taps of every combination task (rule or override) → `stage2.yaml` (a config fragment:
    `lightning-mtl fit --config BASE --config stage2.yaml` trains the LOMT model) and the
    profile plots with the taps marked."""
    tasks = list(dict.fromkeys(t for c in options.combinations for t in c))
    profiles = {
        t: TaskProfile.load(root / "profiles" / f"{t}.json")
        for t in tasks
        if (root / "profiles" / f"{t}.json").is_file()
    }
    architecture, layers = _architecture(options)
    taps = select_taps(
        profiles,
        tasks,
        layers,
        architecture,
        threshold=options.selection.threshold,
        window=options.selection.window,
        overrides=options.selection.taps,
    )
    for task, profile in profiles.items():
        fig = profile_plot(profile, taps[task], options.selection.threshold)
        save_figure(fig, root / "profiles" / f"{task}.png", dpi=120)
    fragment = {"model": {"taps": taps, "tap_output": options.stage2.tap_output}}
    (root / "stage2.yaml").write_text(
        "# LOMT stage-2 taps chosen by `lightning-mtl lomt` (rule or selection.taps)\n"
        + yaml.safe_dump(fragment, sort_keys=False)
    )
    return taps


def compare(options: LOMTOptions, root: Path) -> list[dict[str, Any]]:
    """One row per combination and model kind: each task's main test metric (mean and std
    over seeds), Δm of LOMT against the conventional model, parameters, MACs, latency."""
    rows = []
    for combination in options.combinations:
        label = "+".join(combination)
        results = {
            kind: [read_result(root / "stage2" / f"{kind}_{label}_seed{s}") for s in options.seeds]
            for kind in ("conventional", "lomt")
        }
        latency = _latency(root, label, options)
        means = {}
        for kind, runs in results.items():
            row: dict[str, Any] = {"combination": label, "model": kind}
            for task in combination:
                key = f"test/{task}/{runs[0]['main_metrics'][task]}"
                values = [r["metrics"][key] for r in runs]
                row[key] = statistics.mean(values)
                row[f"{key} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            means[kind] = row
            row["params"] = runs[0]["params"]
            row["macs"] = runs[0]["macs"]
            row["latency_ms"] = latency[kind]
            rows.append(row)
        higher = results["conventional"][0]["higher_is_better"]
        main = results["conventional"][0]["main_metrics"]
        means["lomt"]["delta_m_pct"] = delta_m(
            {t: means["lomt"][f"test/{t}/{main[t]}"] for t in combination},
            {t: means["conventional"][f"test/{t}/{main[t]}"] for t in combination},
            {t: higher[t][main[t]] for t in combination},
        )
        means["conventional"]["delta_m_pct"] = 0.0
    return rows


def write_comparison(rows: Sequence[Mapping[str, Any]], root: Path) -> None:
    """`comparison.csv` (every value) and `comparison.md` (one table per combination)."""
    write_csv(rows, root / "comparison.csv")
    lines = []
    for label in dict.fromkeys(row["combination"] for row in rows):
        group = [row for row in rows if row["combination"] == label]
        metrics = [k for k in group[0] if k.startswith("test/") and not k.endswith(" std")]
        header = ["model", *metrics, "Δm %", "params", "MACs", "latency ms"]
        body = []
        for row in group:
            cells = [row["model"]]
            cells += [f"{row[m]:.4f} ± {row[m + ' std']:.4f}" for m in metrics]
            cells += [f"{row['delta_m_pct']:+.2f}", f"{row['params']:,}", f"{row['macs']:,}"]
            cells.append(f"{row['latency_ms']:.2f}")
            body.append(cells)
        table = markdown_table(header, body, align="-" + "r" * (len(header) - 1))
        lines += [f"### {label}", "", table, ""]
    (root / "comparison.md").write_text("\n".join(lines))


# -- runs --------------------------------------------------------------------------------------


def _train(
    options: LOMTOptions,
    run_dir: Path,
    tasks: Sequence[str],
    seed: int,
    stage1: bool = False,
    taps: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One run of the base config taken to completion (`run_to_completion`: fit, test the best
    checkpoint, `result.json`; a complete run is not run again)."""
    model: dict[str, Any] = {"tasks": list(tasks), "weighting": "uncertainty"}
    model["lambda_"] = options.stage1.lambda_ if stage1 else 0.0
    if taps is not None:
        model |= {"taps": dict(taps), "tap_output": options.stage2.tap_output}
    config = {
        "config": [options.base_config],
        "run": {"root": str(run_dir.parent), "name": run_dir.name, "logger": options.logger},
        "seed_everything": seed,
        "model": model,
    }
    overrides = [*options.args, *(options.stage1.args if stage1 else options.stage2.args)]
    run_to_completion(config, overrides, describe=functools.partial(_describe, taps=taps))
    return read_result(run_dir)


def _describe(cli: LightningMTLCLI, taps: Mapping[str, str] | None) -> dict[str, Any]:
    """What LOMT reads back from a run: taps, architecture, per-conv live fractions, size."""
    module = cli.model
    example = torch.rand(1, 3, *cli.datamodule.image_size)
    macs, params = macs_and_params(module.model.eval(), example)
    return {
        "taps": dict(taps or {}),
        "architecture": _architecture_of(module),
        "layers": module_sparsity(module),
        "params": params,
        "macs": macs,
        "image_size": list(example.shape[-2:]),
    }


def _latency(root: Path, label: str, options: LOMTOptions) -> dict[str, float]:
    """Inference latency (batch 1, CPU/current device) of both models of the first seed,
    timed in alternation."""
    models = {}
    size = None
    for kind in ("conventional", "lomt"):
        run_dir = root / "stage2" / f"{kind}_{label}_seed{options.seeds[0]}"
        module = MultiTaskLightningModule.load_from_checkpoint(
            run_dir / "checkpoints" / "last.ckpt", map_location="cpu"
        )
        models[kind] = module.model.eval()
        size = read_result(run_dir)["image_size"]
    x = torch.rand(1, 3, *size)
    return latency_ms(models, x, rounds=options.stage2.latency_rounds)


def module_sparsity(module: MultiTaskLightningModule) -> dict[str, float]:
    """Live-group fraction per grouped conv, forward order (the stage-1 profile of one seed)."""
    return sparsity_stats(
        module.sparse_weights(original_shapes=True), module.sparsity.group_by
    ).layers


def _architecture_of(module: MultiTaskLightningModule) -> dict[str, Any]:
    """What a profile's layer names belong to: the backbone and its options."""
    hp = module.hparams
    return {"backbone": hp.backbone, "backbone_options": dict(hp.backbone_options or {})}


class _ConfigOnlyCLI(LightningMTLCLI):
    """The fit CLI that parses its config and instantiates nothing."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def _architecture(options: LOMTOptions) -> tuple[dict[str, Any], list[str]]:
    """The stage-2 model's architecture (from the base config and the stage-2 arguments) and
    its backbone's conv names (the backbone alone, built untrained)."""
    args = ["--config", options.base_config, *options.args, *options.stage2.args]
    model = build_cli(args, _ConfigOnlyCLI, run=False).config.model
    architecture = {
        "backbone": model.backbone,
        "backbone_options": dict(model.backbone_options or {}),
    }
    backbone = build_backbone(model.backbone, **architecture["backbone_options"])
    return architecture, [name for name, _ in backbone.conv_layers()]
