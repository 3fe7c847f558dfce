"""`build_multitask_model`: the network of a multi-task module, assembled from its parts.

The LightningModules call this once and never branch on the architecture themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from lightning_mtl.lomt.model import LayerOptimizedModel, TruncatedBackbone
from lightning_mtl.models.backbone import build_backbone
from lightning_mtl.models.heads import build_head
from lightning_mtl.models.multitask import MultiTaskModel
from lightning_mtl.tasks import Task

__all__ = ["build_multitask_model"]


def build_multitask_model(
    tasks: Mapping[str, Task],
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
