"""NYU-v2 from disk (MTAN npy, NYUD-MT, PNG exports), a root checker, and a synthetic writer."""

from .datamodule import NYUv2DataModule
from .formats import FORMATS, IGNORE_INDEX, NYUv2DataError, label_edges
from .reader import Layout, Sample, check_nyuv2, resolve
from .writer import synthetic_scene, write_synthetic_nyuv2

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "Layout",
    "NYUv2DataError",
    "NYUv2DataModule",
    "Sample",
    "check_nyuv2",
    "label_edges",
    "resolve",
    "synthetic_scene",
    "write_synthetic_nyuv2",
]
