"""Procedurally rendered indoor scenes with dense and image-level targets (no download)."""

from .datamodule import TARGETS, SyntheticDataModule, SyntheticDataset
from .sample import BINARY_LABELS, render_sample
from .scene import CLASS_NAMES

__all__ = [
    "BINARY_LABELS",
    "CLASS_NAMES",
    "TARGETS",
    "SyntheticDataModule",
    "SyntheticDataset",
    "render_sample",
]
