"""LightningDataModules yielding dict batches: `image` plus one key per provided target."""

from .celebamask import CelebAMaskHQDataModule
from .manifest import ManifestDataModule
from .meta import MetaTaskDataModule, task_combinations
from .nyuv2 import NYUv2DataModule
from .synthetic import SyntheticDataModule

__all__ = [
    "CelebAMaskHQDataModule",
    "ManifestDataModule",
    "MetaTaskDataModule",
    "NYUv2DataModule",
    "SyntheticDataModule",
    "task_combinations",
]
