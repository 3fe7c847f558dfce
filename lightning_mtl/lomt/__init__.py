"""LOMT (layer-optimized multi-task models): stage-1 profiles → stage-2 decoder taps."""

from lightning_mtl.lomt.selection import (
    TaskProfile,
    active_layers,
    profile_plot,
    select_tap,
    select_taps,
)

__all__ = ["TaskProfile", "active_layers", "profile_plot", "select_tap", "select_taps"]
