"""LightningModules."""

from lightning_mtl.modules.finite import NonFiniteError
from lightning_mtl.modules.meta_sparsity import MetaSparsityModule
from lightning_mtl.modules.multitask import PARAM_GROUPS, MultiTaskLightningModule

__all__ = ["PARAM_GROUPS", "MetaSparsityModule", "MultiTaskLightningModule", "NonFiniteError"]
