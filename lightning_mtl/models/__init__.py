"""Backbones, task heads and the multi-task model (the LOMT model is in `lightning_mtl.lomt`)."""

from lightning_mtl.models.backbone import BACKBONES, DilatedResNet, build_backbone
from lightning_mtl.models.heads import HEADS, ClassificationHead, DeepLabV3Head, build_head
from lightning_mtl.models.multitask import MultiTaskModel
from lightning_mtl.models.torchvision_backbone import TorchvisionBackbone, torchvision_backbone

__all__ = [
    "BACKBONES",
    "HEADS",
    "ClassificationHead",
    "DeepLabV3Head",
    "DilatedResNet",
    "MultiTaskModel",
    "TorchvisionBackbone",
    "build_backbone",
    "build_head",
    "torchvision_backbone",
]
