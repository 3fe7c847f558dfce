"""LightningModules."""

from lightning_mtl.modules.finite import NonFiniteError
from lightning_mtl.modules.multitask import PARAM_GROUPS, MultiTaskLightningModule

__all__ = ["PARAM_GROUPS", "MultiTaskLightningModule", "NonFiniteError"]
