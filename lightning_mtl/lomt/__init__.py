"""LOMT (layer-optimized multi-task models): the tapped model, stage-1 profiles → stage-2 taps.

`model` (TruncatedBackbone, LayerOptimizedModel), `selection` (profiles and the tap rule) and
`pipeline` (`lightning-mtl lomt`, imported on its own: it builds trainings).
"""

from lightning_mtl.lomt.model import TAP_OUTPUTS, LayerOptimizedModel, TruncatedBackbone
from lightning_mtl.lomt.selection import (
    TaskProfile,
    active_layers,
    profile_plot,
    select_tap,
    select_taps,
)

__all__ = [
    "TAP_OUTPUTS",
    "LayerOptimizedModel",
    "TaskProfile",
    "TruncatedBackbone",
    "active_layers",
    "profile_plot",
    "select_tap",
    "select_taps",
]
