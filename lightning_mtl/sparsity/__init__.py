"""Group sparsity of the shared backbone: the prox optimizer, its operators and statistics."""

from lightning_mtl.sparsity.compact import (
    CompactionReport,
    compact,
    export_onnx,
    export_torchscript,
    load_compacted,
    macs_and_params,
    save_compacted,
)
from lightning_mtl.sparsity.groups import conv_weights, group_size, live_groups
from lightning_mtl.sparsity.optimizer import PENALTIES, PROXES, ProxAdamW
from lightning_mtl.sparsity.stats import SparsityStats, sparsity_stats

__all__ = [
    "PENALTIES",
    "PROXES",
    "CompactionReport",
    "ProxAdamW",
    "SparsityStats",
    "compact",
    "conv_weights",
    "export_onnx",
    "export_torchscript",
    "group_size",
    "live_groups",
    "load_compacted",
    "macs_and_params",
    "save_compacted",
    "sparsity_stats",
]
