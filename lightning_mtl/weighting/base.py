"""The loss-weighting extension point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["LossWeighting"]


class LossWeighting(nn.Module):
    """Combines per-task losses into the total loss; may own learnable parameters.

    Subclasses implement `combine` (total from the losses stacked in `task_keys` order) and
    `weight_vector` (effective per-task weights). Its parameters must reach the optimizer.
    """

    def __init__(self, task_keys: Sequence[str]) -> None:
        super().__init__()
        if not task_keys or len(set(task_keys)) != len(task_keys):
            raise ValueError(f"task_keys must be non-empty and distinct, got {list(task_keys)}")
        self.task_keys = tuple(task_keys)

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Total loss from scalar per-task losses keyed exactly by `task_keys`."""
        if set(losses) != set(self.task_keys):
            raise ValueError(
                f"losses must have exactly the keys {list(self.task_keys)}; missing "
                f"{[k for k in self.task_keys if k not in losses]}, unexpected "
                f"{[k for k in losses if k not in self.task_keys]}"
            )
        not_scalar = [k for k in self.task_keys if losses[k].dim() != 0]
        if not_scalar:
            raise ValueError(f"losses must be scalars; not scalar: {not_scalar}")
        return self.combine(torch.stack([losses[k] for k in self.task_keys]))

    def combine(self, losses: Tensor) -> Tensor:
        """Total loss from the per-task losses [T] in `task_keys` order."""
        raise NotImplementedError

    def weight_vector(self) -> Tensor:
        """Effective per-task weights [T] in `task_keys` order."""
        raise NotImplementedError

    def weights(self) -> dict[str, Tensor]:
        """Effective weight per task, detached, for logging."""
        return dict(zip(self.task_keys, self.weight_vector().detach().unbind(), strict=True))
