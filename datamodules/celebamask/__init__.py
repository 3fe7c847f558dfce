"""CelebAMask-HQ: face parsing and the 40 CelebA attributes, read from the official layout."""

from .classes import CLASS_MAPS, CLASS_NAMES, PARTS, class_map, flip_label_map
from .datamodule import ATTRIBUTE_ALIASES, ATTRIBUTE_KEYS, CelebAMaskHQDataModule
from .layout import ATTRIBUTES, check_celebamask
from .writer import write_synthetic_celebamask

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_ALIASES",
    "ATTRIBUTE_KEYS",
    "CLASS_MAPS",
    "CLASS_NAMES",
    "PARTS",
    "CelebAMaskHQDataModule",
    "check_celebamask",
    "class_map",
    "flip_label_map",
    "write_synthetic_celebamask",
]
