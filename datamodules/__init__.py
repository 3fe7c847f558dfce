"""LightningDataModules yielding dict batches: `image` plus one key per provided target."""

from .celebamask import CelebAMaskHQDataModule
from .nyuv2 import NYUv2DataModule
from .synthetic import SyntheticDataModule

__all__ = ["CelebAMaskHQDataModule", "NYUv2DataModule", "SyntheticDataModule"]
