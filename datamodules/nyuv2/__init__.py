"""NYU-v2 from disk (MTAN npy, NYUD-MT, PNG exports), a root checker, and a synthetic writer."""

from ..decoding import label_edges
from .datamodule import NYUv2DataModule
from .formats import (
    FORMATS,
    NYUv2DataError,
    NYUv2Format,
    list_nyuv2_formats,
    register_nyuv2_format,
)
from .reader import Layout, Sample, check_nyuv2, resolve
from .writer import synthetic_scene, write_synthetic_nyuv2

__all__ = [
    "FORMATS",
    "Layout",
    "NYUv2DataError",
    "NYUv2DataModule",
    "NYUv2Format",
    "Sample",
    "check_nyuv2",
    "label_edges",
    "list_nyuv2_formats",
    "register_nyuv2_format",
    "resolve",
    "synthetic_scene",
    "write_synthetic_nyuv2",
]
