"""Backbones, task heads and the multi-task models."""

from lightning_mtl.models.backbone import BACKBONES, DilatedResNet, build_backbone
from lightning_mtl.models.heads import HEADS, ClassificationHead, DeepLabV3Head, build_head
from lightning_mtl.models.lomt import TAP_OUTPUTS, LayerOptimizedModel, TruncatedBackbone
from lightning_mtl.models.multitask import MultiTaskModel

__all__ = [
    "BACKBONES",
    "HEADS",
    "TAP_OUTPUTS",
    "ClassificationHead",
    "DeepLabV3Head",
    "DilatedResNet",
    "LayerOptimizedModel",
    "MultiTaskModel",
    "TruncatedBackbone",
    "build_backbone",
    "build_head",
]
