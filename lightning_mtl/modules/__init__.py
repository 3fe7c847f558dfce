"""LightningModules: a shared base and the multi-task module (meta: `lightning_mtl.meta`)."""

from lightning_mtl.modules.base import PARAM_GROUPS, MultiTaskModuleBase
from lightning_mtl.modules.finite import NonFiniteError, NonFiniteWarning
from lightning_mtl.modules.multitask import MultiTaskLightningModule

__all__ = [
    "PARAM_GROUPS",
    "MultiTaskLightningModule",
    "MultiTaskModuleBase",
    "NonFiniteError",
    "NonFiniteWarning",
]
