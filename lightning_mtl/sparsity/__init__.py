"""Group sparsity of the shared backbone: the settings, the prox optimizer, its operators,
statistics and compaction."""

from lightning_mtl.sparsity.compact import (
    CompactionReport,
    compact,
    export_onnx,
    export_torchscript,
    macs_and_params,
)
from lightning_mtl.sparsity.config import PROX_METRICS, GroupSparsity
from lightning_mtl.sparsity.groups import conv_weights, group_size, live_groups
from lightning_mtl.sparsity.operators import (
    PROX_OPERATORS,
    list_prox_operators,
    register_prox_operator,
)
from lightning_mtl.sparsity.optimizer import ProxAdamW
from lightning_mtl.sparsity.plan import CompactionPlan, CompactionPlanError
from lightning_mtl.sparsity.stats import SparsityStats, sparsity_stats

__all__ = [
    "PROX_METRICS",
    "PROX_OPERATORS",
    "CompactionPlan",
    "CompactionPlanError",
    "CompactionReport",
    "GroupSparsity",
    "ProxAdamW",
    "SparsityStats",
    "compact",
    "conv_weights",
    "export_onnx",
    "export_torchscript",
    "group_size",
    "list_prox_operators",
    "live_groups",
    "macs_and_params",
    "register_prox_operator",
    "sparsity_stats",
]
