"""lightning-mtl: parsimonious multi-task vision models with group-lasso sparsity.

The public names are imported on first use (`lightning_mtl._lazy`), so importing one module of
the package, such as the batch contract `lightning_mtl.targets`, does not load Lightning.
"""

from typing import TYPE_CHECKING

from lightning_mtl._lazy import lazy_exports

if TYPE_CHECKING:
    from lightning_mtl.meta.module import MetaSparsityModule
    from lightning_mtl.models import DilatedResNet, MultiTaskModel
    from lightning_mtl.models.backbone import list_backbones
    from lightning_mtl.models.builder import build_multitask_model
    from lightning_mtl.models.compacted import load_compacted, save_compacted
    from lightning_mtl.models.heads import list_heads
    from lightning_mtl.modules import MultiTaskLightningModule
    from lightning_mtl.registry import Registry
    from lightning_mtl.sparsity import (
        GroupSparsity,
        ProxAdamW,
        SparsityStats,
        list_prox_operators,
        register_prox_operator,
        sparsity_stats,
    )
    from lightning_mtl.targets import IGNORE_INDEX, TargetSpec
    from lightning_mtl.tasks import Task, build_task, list_tasks, register_task
    from lightning_mtl.weighting import list_weightings, register_weighting

__all__ = [
    "IGNORE_INDEX",
    "DilatedResNet",
    "GroupSparsity",
    "MetaSparsityModule",
    "MultiTaskLightningModule",
    "MultiTaskModel",
    "ProxAdamW",
    "Registry",
    "SparsityStats",
    "TargetSpec",
    "Task",
    "build_multitask_model",
    "build_task",
    "list_backbones",
    "list_heads",
    "list_prox_operators",
    "list_tasks",
    "list_weightings",
    "load_compacted",
    "register_prox_operator",
    "register_task",
    "register_weighting",
    "save_compacted",
    "sparsity_stats",
]
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "lightning_mtl.meta.module": ["MetaSparsityModule"],
        "lightning_mtl.models": ["DilatedResNet", "MultiTaskModel"],
        "lightning_mtl.models.backbone": ["list_backbones"],
        "lightning_mtl.models.builder": ["build_multitask_model"],
        "lightning_mtl.models.compacted": ["load_compacted", "save_compacted"],
        "lightning_mtl.models.heads": ["list_heads"],
        "lightning_mtl.modules": ["MultiTaskLightningModule"],
        "lightning_mtl.registry": ["Registry"],
        "lightning_mtl.sparsity": [
            "GroupSparsity",
            "ProxAdamW",
            "SparsityStats",
            "list_prox_operators",
            "register_prox_operator",
            "sparsity_stats",
        ],
        "lightning_mtl.targets": ["IGNORE_INDEX", "TargetSpec"],
        "lightning_mtl.tasks": ["Task", "build_task", "list_tasks", "register_task"],
        "lightning_mtl.weighting": ["list_weightings", "register_weighting"],
    },
)
