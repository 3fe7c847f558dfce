"""The batch contract between datamodules and tasks: what a batch key holds.

A datamodule declares what it provides as `TargetSpec`s by batch key; the tasks read them. The
rules of each target kind (array layout, dtype, resampling, flip rule) live in one table here,
read by the datamodules, the joint transforms and the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["IGNORE_INDEX", "TargetSpec"]

#: label value of unlabelled pixels in every `seg` target
IGNORE_INDEX = 255


@dataclass(frozen=True)
class TargetSpec:
    """What a datamodule provides under one batch key.

    `kind` names the target kind (`seg`, `depth`, `normal`, `edge`, `binary`), which is also the
    built-in task kind that reads it; `num_classes` is set for `seg`.
    """

    kind: str
    num_classes: int | None = None


torch.serialization.add_safe_globals([TargetSpec])  # stored in checkpoints' hyperparameters
