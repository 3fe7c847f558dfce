"""Stop training at the first non-finite loss or gradient, saying where it came from; the warning
for a non-finite prediction at validation/test."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite. Raised inside the training step, before the
    optimizer step, so no checkpoint is written from the bad state: the last one stays good."""


class NonFiniteWarning(RuntimeWarning):
    """A validation/test prediction held NaN/inf: the metrics of its task are NaN for the split."""


def check_finite_losses(losses: Mapping[str, Tensor], step: int) -> None:
    """Raise `NonFiniteError` naming every task whose loss is NaN/inf (one host sync)."""
    values = torch.stack([loss.detach().float() for loss in losses.values()])
    if bool(values.isfinite().all()):
        return
    bad = {k: float(v) for k, v in zip(losses, values, strict=True) if not torch.isfinite(v)}
    raise NonFiniteError(
        f"non-finite loss at step {step}: task(s) {bad}; training stopped before the optimizer "
        "step, the last checkpoint is from before it. Lower the learning rate, check the "
        "targets of these tasks, or resume from that checkpoint."
    )


def check_finite_grads(named_grads: Mapping[str, Tensor | None], step: int) -> None:
    """Raise `NonFiniteError` naming the parameters whose gradient holds NaN/inf."""
    grads = {n: g for n, g in named_grads.items() if g is not None}
    if not grads:
        return
    finite = torch.stack([g.detach().isfinite().all() for g in grads.values()])
    if bool(finite.all()):
        return
    bad = [n for n, ok in zip(grads, finite.tolist(), strict=True) if not ok]
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise NonFiniteError(
        f"non-finite gradient at step {step} in {shown}; training stopped before the optimizer "
        "step, the last checkpoint is from before it (heads.<task>.* names the task)."
    )
