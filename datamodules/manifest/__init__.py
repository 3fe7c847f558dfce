"""Your own dataset without code: `manifest.csv` lists the samples, `targets.yaml` declares the
kind of each target column."""

from .columns import COLUMN_KINDS, ManifestError
from .datamodule import ManifestDataModule
from .reader import check_manifest, open_manifest, read_columns

__all__ = [
    "COLUMN_KINDS",
    "ManifestDataModule",
    "ManifestError",
    "check_manifest",
    "open_manifest",
    "read_columns",
]
