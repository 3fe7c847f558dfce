"""Group sparsity of the shared backbone: the prox optimizer, its operators and statistics."""

from lightning_mtl.sparsity.groups import conv_weights, group_size, live_groups
from lightning_mtl.sparsity.optimizer import PENALTIES, PROXES, ProxAdamW
from lightning_mtl.sparsity.stats import SparsityStats, sparsity_stats

__all__ = [
    "PENALTIES",
    "PROXES",
    "ProxAdamW",
    "SparsityStats",
    "conv_weights",
    "group_size",
    "live_groups",
    "sparsity_stats",
]
