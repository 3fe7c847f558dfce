"""RNGStateCheckpoint: the global RNG streams in the checkpoint, so a resumed run draws the
same dropout masks (and plain-DataLoader shuffles) as an uninterrupted one, on CPU and CUDA."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStateCheckpoint(L.Callback):
    """Saves the torch (CPU, and the current CUDA device's once CUDA is in use: dropout on a
    GPU draws from it), numpy and python global RNG states with every checkpoint and restores
    them when a run resumes; the sanity-check validation is made RNG-neutral so it cannot shift
    them.

    The library's train loaders draw nothing from these streams (their order and augmentation
    come from `datamodules.sampling`), so the first batch after a mid-epoch checkpoint sees the
    stream as saved; a plain shuffling loader draws its epoch's permutation from it at the same
    point in both runs, so epoch-end resumes stay exact too. Only the saving process's (rank
    0's) streams are in a checkpoint and every rank resumes with them: under DDP that is exact
    while the ranks' streams agree (`seed_everything` seeds every rank alike).
    """

    def __init__(self) -> None:
        self._before_sanity_check: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            self._before_sanity_check = rng_states()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking and self._before_sanity_check is not None:
            set_rng_states(self._before_sanity_check)


def rng_states() -> dict[str, Any]:
    """The torch, numpy and python global RNG states as tensors and plain (weights-only) values;
    `torch_cuda`: the current CUDA device's, once CUDA is initialised (reading it earlier would
    initialise CUDA in a run that does not use it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global stream)
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(states["python"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["torch_cuda"])
