"""LightningDataModules yielding dict batches: `image` plus one key per provided target."""

from .synthetic import SyntheticDataModule

__all__ = ["SyntheticDataModule"]
