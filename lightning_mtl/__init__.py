"""lightning-mtl: parsimonious multi-task vision models with group-lasso sparsity."""

from lightning_mtl.meta.module import MetaSparsityModule
from lightning_mtl.models import DilatedResNet, MultiTaskModel
from lightning_mtl.modules import MultiTaskLightningModule
from lightning_mtl.sparsity import ProxAdamW, SparsityStats, sparsity_stats
from lightning_mtl.tasks import TargetSpec, Task, build_task, register_task

__all__ = [
    "DilatedResNet",
    "MetaSparsityModule",
    "MultiTaskLightningModule",
    "MultiTaskModel",
    "ProxAdamW",
    "SparsityStats",
    "TargetSpec",
    "Task",
    "build_task",
    "register_task",
    "sparsity_stats",
]
__version__ = "0.1.0"
