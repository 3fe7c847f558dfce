"""Lightning callbacks, one concern each."""

from lightning_mtl.callbacks.optimizer_reset import ResetOptimizerState
from lightning_mtl.callbacks.prediction_samples import PredictionSamples
from lightning_mtl.callbacks.prox_warmup import ProxWarmup
from lightning_mtl.callbacks.rng_state import RNGStateCheckpoint
from lightning_mtl.callbacks.run_summary import RunSummary
from lightning_mtl.callbacks.sparsity_monitor import SparsityMonitor
from lightning_mtl.callbacks.train_compaction import TrainTimeCompaction

__all__ = [
    "PredictionSamples",
    "ProxWarmup",
    "RNGStateCheckpoint",
    "ResetOptimizerState",
    "RunSummary",
    "SparsityMonitor",
    "TrainTimeCompaction",
]
