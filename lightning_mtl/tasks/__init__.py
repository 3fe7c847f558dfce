"""Tasks: the extension point. Built-in kinds `seg`, `depth`, `normal`, `edge`, `binary`."""

from lightning_mtl.targets import IGNORE_INDEX, TargetSpec
from lightning_mtl.tasks.base import (
    TASK_REGISTRY,
    HeadKind,
    Task,
    build_task,
    list_tasks,
    masked_mean,
    register_task,
)
from lightning_mtl.tasks.classification import BinaryClassificationTask
from lightning_mtl.tasks.depth import DepthTask
from lightning_mtl.tasks.edge import EdgeTask
from lightning_mtl.tasks.normal import NormalTask
from lightning_mtl.tasks.segmentation import SegmentationTask, label_palette

__all__ = [
    "IGNORE_INDEX",
    "TASK_REGISTRY",
    "BinaryClassificationTask",
    "DepthTask",
    "EdgeTask",
    "HeadKind",
    "NormalTask",
    "SegmentationTask",
    "TargetSpec",
    "Task",
    "build_task",
    "label_palette",
    "list_tasks",
    "masked_mean",
    "register_task",
]
