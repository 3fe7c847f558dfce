"""Meta-test: fine-tune from the meta-learned θ*, λ* on seen and unseen task sets; one table."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_mtl.meta.module import MetaSparsityModule
from lightning_mtl.sparsity import ProxAdamW, sparsity_stats
from lightning_mtl.tables import markdown_table, write_csv
from lightning_mtl.tasks import TargetSpec, build_task

#: the meta-test's result file in its folder (written last)
META_TEST_RESULT = "meta_test.json"


@dataclass
class MetaTestOptions:
    """What the meta-test fine-tunes once meta-training is over.

    Args:
        seen: task sets made of meta-trained tasks; their heads start from the meta-learned ones.
        unseen: task sets with at least one task held out of meta-training (it gets a new head).
        epochs: fine-tuning epochs per task set.
        lr: fine-tuning learning rate (ProxAdamW, λ* fixed).
        scratch: also fine-tune every task set from a random init with the same λ*: the
            reference that shows what the meta-learned initialisation is worth.
        seed: seed of every fine-tuning run, so the rows differ only in what they compare.
        patience: stop a fine-tuning run early when `val/loss` has not improved for this many
            epochs (None: run all `epochs`).
    """

    seen: list[list[str]] = field(default_factory=list)
    unseen: list[list[str]] = field(default_factory=list)
    epochs: int = 1
    lr: float = 1e-4
    scratch: bool = True
    seed: int = 0
    patience: int | None = None


def check_meta_test(
    options: MetaTestOptions, meta_tasks: Sequence[str], targets: Mapping[str, TargetSpec]
) -> None:
    """Fail before meta-training when the meta-test cannot run: a task the datamodule cannot
    provide, a `seen` set with a task not meta-trained, an `unseen` set with none held out."""
    if options.epochs < 1:
        raise ValueError(f"meta_test.epochs must be >= 1, got {options.epochs}")
    if options.patience is not None and options.patience < 1:
        raise ValueError(f"meta_test.patience must be >= 1 or null, got {options.patience}")
    for phase, task_sets in (("seen", options.seen), ("unseen", options.unseen)):
        for tasks in task_sets:
            if not tasks:
                raise ValueError(f"meta_test.{phase} has an empty task set")
            for key in tasks:
                try:
                    build_task(key, targets)
                except (KeyError, ValueError) as error:
                    raise ValueError(
                        f"meta_test.{phase} task {key!r} cannot be built from what the "
                        f"datamodule provides ({list(targets)}): {error}"
                    ) from error
            held_out = [k for k in tasks if k not in meta_tasks]
            if phase == "seen" and held_out:
                raise ValueError(
                    f"meta_test.seen set {tasks} has tasks {held_out} that were not meta-trained "
                    f"(meta-training tasks: {list(meta_tasks)}); list it under meta_test.unseen"
                )
            if phase == "unseen" and not held_out:
                raise ValueError(
                    f"meta_test.unseen set {tasks} holds out no task: all were meta-trained "
                    f"({list(meta_tasks)}); list it under meta_test.seen"
                )


def meta_test(
    meta: MetaSparsityModule,
    datamodule: L.LightningDataModule,
    options: MetaTestOptions,
    out_dir: str | Path,
    trainer_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune and test every task set; write `meta_test.csv`, `meta_test.md` and
    `meta_test.json` (the rows with each task's main metric and metric directions) to `out_dir`.

    Each row: phase (seen/unseen), init (meta/scratch), tasks, λ, % group and parameter
    sparsity of the fine-tuned backbone, and every test metric. `datamodule` is the plain
    multi-task datamodule (every target), not the meta-batch wrapper.
    """
    out = Path(out_dir)
    check_meta_test(options, list(meta.tasks), datamodule.targets)
    inits = ("meta", "scratch") if options.scratch else ("meta",)
    rows: list[dict[str, Any]] = []
    main_metrics: dict[str, str] = {}
    higher_is_better: dict[str, dict[str, bool]] = {}
    for phase, task_sets in (("seen", options.seen), ("unseen", options.unseen)):
        for tasks in task_sets:
            for init in inits:
                L.seed_everything(options.seed, verbose=False)
                module = meta.finetune_module(
                    tasks,
                    datamodule.targets,
                    meta_init=init == "meta",
                    optimizer=functools.partial(ProxAdamW, lr=options.lr, eps=1e-6),
                )
                name = f"{phase}_{init}_{'+'.join(tasks)}"
                stop = [EarlyStopping("val/loss", patience=options.patience)]
                trainer = L.Trainer(
                    max_epochs=options.epochs,
                    callbacks=stop if options.patience is not None else [],
                    logger=CSVLogger(out, name=name, version=""),
                    enable_checkpointing=False,
                    enable_model_summary=False,
                    **(trainer_options or {}),
                )
                trainer.fit(module, datamodule)
                metrics = trainer.test(module, datamodule, verbose=False)[0]
                stats = sparsity_stats(
                    module.sparse_weights(original_shapes=True), module.sparsity.group_by
                )
                main_metrics.update({k: t.main_metric for k, t in module.tasks.items()})
                higher_is_better.update(
                    {k: dict(t.higher_is_better) for k, t in module.tasks.items()}
                )
                rows.append(
                    {
                        "phase": phase,
                        "init": init,
                        "tasks": "+".join(tasks),
                        "lambda": module.current_lambda,
                        "group_pct": stats.group_pct,
                        "param_pct": stats.param_pct,
                        **{k: float(v) for k, v in metrics.items() if not k.endswith("/loss")},
                    }
                )
    if rank_zero_only.rank == 0:
        _write_tables(rows, main_metrics, higher_is_better, out)
    return rows


def _write_tables(
    rows: list[dict[str, Any]],
    main_metrics: Mapping[str, str],
    higher_is_better: Mapping[str, Mapping[str, bool]],
    out: Path,
) -> None:
    """Every value as CSV and JSON (with the metrics' meaning); the main metric of each task as
    a Markdown table. The JSON is written last, so its presence means the meta-test finished."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "meta_test.csv")
    metric_columns = [f"test/{task}/{metric}" for task, metric in main_metrics.items()]
    header = ["phase", "init", "tasks", "λ", "% groups zero", "% params zero", *metric_columns]
    body = []
    for row in rows:
        cells = [row["phase"], row["init"], row["tasks"], f"{row['lambda']:.3g}"]
        cells += [f"{row['group_pct']:.1f}", f"{row['param_pct']:.1f}"]
        cells += [f"{row[c]:.4f}" if c in row else "" for c in metric_columns]
        body.append(cells)
    (out / "meta_test.md").write_text(markdown_table(header, body) + "\n")
    result = {"main_metrics": main_metrics, "higher_is_better": higher_is_better, "rows": rows}
    tmp = out / ".meta_test.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / META_TEST_RESULT)
