"""Checkpoint files that are never half-written, and unreadable ones named as such."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_mtl.models.compacted import COMPACTED_FORMAT


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: truncated, corrupt, or not a checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` for local files whose save is atomic: the checkpoint is written to a
    temporary file in the same folder, flushed to disk, then renamed over the target, so a
    crash or kill during a save leaves the previous file (e.g. `last.ckpt`) intact. Loading a
    file that is truncated or corrupt raises `CheckpointError` naming it. Remote paths (with a
    `://`) keep Lightning's own save."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got them for {path}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        try:
            checkpoint = super().load_checkpoint(path, map_location, weights_only)
        except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
            if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
                if "lightning_mtl.models" in str(error):
                    raise CheckpointError(
                        f"{path} holds a pickled model, not a Lightning checkpoint (an earlier "
                        "lightning-mtl compact wrote those; compact the checkpoint again and load "
                        "the result with lightning_mtl.models.compacted.load_compacted)"
                    ) from error
                raise  # readable, but holds objects weights-only loading refuses: torch says why
            raise CheckpointError(
                f"checkpoint {path} cannot be read: it is truncated or corrupt ({error}). Use an "
                "earlier checkpoint of the run, e.g. another file in its checkpoints/ folder."
            ) from error
        compacted = isinstance(checkpoint, dict) and checkpoint.get("format") == COMPACTED_FORMAT
        if compacted or not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            what = "a compacted model" if compacted else "no state_dict"
            raise CheckpointError(
                f"{path} is not a Lightning checkpoint ({what}); a compacted model "
                "(lightning-mtl compact) loads with lightning_mtl.models.compacted.load_compacted"
            )
        return checkpoint
