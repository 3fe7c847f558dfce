"""`build_multitask_model`: the network of a multi-task module, assembled from its parts.

The LightningModules call this once and never branch on the architecture themselves. Its
arguments as plain data (`model_spec`) are what a compacted model file stores to rebuild the
network (`build_from_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lightning_mtl.lomt.model import LayerOptimizedModel, TruncatedBackbone
from lightning_mtl.models.backbone import build_backbone
from lightning_mtl.models.heads import build_head
from lightning_mtl.models.multitask import MultiTaskModel
from lightning_mtl.tasks import Task

__all__ = ["HeadSpec", "build_from_spec", "build_multitask_model", "model_spec"]


@dataclass(frozen=True)
class HeadSpec:
    """What the builder reads of a task: its head kind and output channels (a `Task` has both)."""

    head: str
    out_channels: int


def build_multitask_model(
    tasks: Mapping[str, Task | HeadSpec],
    *,
    backbone: str = "resnet50",
    backbone_options: Mapping[str, Any] | None = None,
    head_channels: int = 256,
    taps: Mapping[str, str] | None = None,
    tap_output: Literal["conv", "block"] = "conv",
) -> MultiTaskModel | LayerOptimizedModel:
    """A shared backbone (by registered name) with one head per task.

    `taps=None`: the conventional `MultiTaskModel`, every head on the last feature map. With
    `taps` (task key → backbone conv name, one per task) the LOMT model: the backbone cut after
    the deepest tap (`TruncatedBackbone`) and each head built for its tap's channel count
    (`LayerOptimizedModel`). Heads are chosen by each task's `head` kind.
    """
    net = build_backbone(backbone, **dict(backbone_options or {}))
    if taps is None:
        heads = {
            key: build_head(task.head, net.out_channels, task.out_channels, head_channels)
            for key, task in tasks.items()
        }
        return MultiTaskModel(net, heads)
    _check_taps(taps, list(tasks))
    task_taps = {key: taps[key] for key in tasks}
    truncated = TruncatedBackbone(net, list(task_taps.values()), tap_output)
    heads = {
        key: build_head(
            task.head, truncated.out_channels[task_taps[key]], task.out_channels, head_channels
        )
        for key, task in tasks.items()
    }
    return LayerOptimizedModel(truncated, heads, task_taps)


def model_spec(
    tasks: Mapping[str, Task | HeadSpec],
    *,
    backbone: str = "resnet50",
    backbone_options: Mapping[str, Any] | None = None,
    head_channels: int = 256,
    taps: Mapping[str, str] | None = None,
    tap_output: Literal["conv", "block"] = "conv",
) -> dict[str, Any]:
    """`build_multitask_model`'s arguments as plain data (str, int, float, bool, None, lists and
    dicts; tasks as their `HeadSpec` fields): `build_from_spec` builds the same network from it.
    Raises `TypeError` naming an option that is not plain data."""
    return {
        "tasks": {
            k: {"head": t.head, "out_channels": int(t.out_channels)} for k, t in tasks.items()
        },
        "backbone": backbone,
        "backbone_options": _plain(dict(backbone_options or {}), "backbone_options"),
        "head_channels": int(head_channels),
        "taps": None if taps is None else dict(taps),
        "tap_output": tap_output,
    }


def build_from_spec(spec: Mapping[str, Any]) -> MultiTaskModel | LayerOptimizedModel:
    """The network `model_spec` describes."""
    tasks = {key: HeadSpec(**head) for key, head in spec["tasks"].items()}
    return build_multitask_model(tasks, **{k: v for k, v in spec.items() if k != "tasks"})


def _plain(value: Any, where: str) -> Any:
    """`value` with tuples as lists; refuses anything but JSON's types."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"{where} is a {type(value).__name__}, not plain data (str, number, list, dict)"
    )


def _check_taps(taps: Mapping[str, str], tasks: list[str]) -> None:
    missing = [k for k in tasks if k not in taps]
    if missing:
        raise ValueError(
            f"taps must name a conv for every task; tasks without a tap: {missing}; "
            f"taps given for: {list(taps)}"
        )
    unknown = [k for k in taps if k not in tasks]
    if unknown:
        raise ValueError(f"taps names tasks that are not trained {unknown}; the tasks are {tasks}")
