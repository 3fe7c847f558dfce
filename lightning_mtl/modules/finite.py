"""Stop training at the first non-finite loss or gradient, saying where it came from, with one
host read per optimizer step; count the val/test batches with a non-finite prediction, with one
host read per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite. Raised before the optimizer step, so no
    checkpoint is written from the bad state: the last one stays good."""


class NonFiniteWarning(RuntimeWarning):
    """A validation/test prediction held NaN/inf: the metrics of its task are NaN for the split."""


class NonFiniteStep:
    """One device-side flag per optimizer step, set by any NaN/inf loss or gradient of the step
    (the `found_inf` of torch's `GradScaler` and fused optimizers).

    `add_losses` (every micro-batch) and `add_grads` (before the optimizer step) fold their
    tensors into the flag on the device, each in one fused `_amp_foreach_non_finite_check_and_
    unscale_` call, without reading it; `raise_if_set` reads it once — the step's one host
    sync — and only when it is set looks at the values again to name the tasks or parameters.
    """

    def __init__(self) -> None:
        self.reset()

    def add_losses(self, losses: Mapping[str, Tensor], step: int) -> None:
        """Fold a (micro-)batch's task losses into the flag."""
        detached = {k: loss.detach() for k, loss in losses.items()}
        self._losses.append((step, detached))
        values = torch.stack([loss.float() for loss in detached.values()])  # a copy to check
        self._fold([values])

    def add_grads(self, named_grads: Mapping[str, Tensor | None]) -> None:
        """Fold the gradients (parameter name → `.grad`, None skipped) into the flag."""
        self._grads = {n: g.detach() for n, g in named_grads.items() if g is not None}
        if self._grads:
            self._fold(list(self._grads.values()))

    def raise_if_set(self, step: int) -> None:
        """Read the flag (one host sync) and start the next step; raise `NonFiniteError` naming
        the tasks whose loss, else the parameters whose gradient, was NaN/inf."""
        found, losses, grads = self._found, self._losses, self._grads
        self.reset()
        if found is None or not bool(found):
            return
        for index, (loss_step, values) in enumerate(losses):
            bad = {k: float(v) for k, v in values.items() if not torch.isfinite(v)}
            if bad:
                where = f" (micro-batch {index + 1} of {len(losses)})" if len(losses) > 1 else ""
                raise NonFiniteError(
                    f"non-finite loss at step {loss_step}: task(s) {bad}{where}; training stopped "
                    "before the optimizer step, the last checkpoint is from before it. Lower the "
                    "learning rate, check the targets of these tasks, or resume from that "
                    "checkpoint."
                )
        bad_grads = [n for n, g in grads.items() if not bool(g.isfinite().all())]
        shown = ", ".join(bad_grads[:5]) + (
            f" and {len(bad_grads) - 5} more" if len(bad_grads) > 5 else ""
        )
        raise NonFiniteError(
            f"non-finite gradient at step {step} in {shown}; training stopped before the optimizer "
            "step, the last checkpoint is from before it (heads.<task>.* names the task)."
        )

    def reset(self) -> None:
        """Forget what was added (a new step, or a new fit after an interrupted one)."""
        self._found: Tensor | None = None
        self._one: Tensor | None = None
        self._losses: list[tuple[int, dict[str, Tensor]]] = []
        self._grads: dict[str, Tensor] = {}

    def _fold(self, tensors: list[Tensor]) -> None:
        if self._found is None:
            self._found = torch.zeros(1, device=tensors[0].device)
            self._one = torch.ones(1, device=tensors[0].device)
        # "unscaling" by 1 leaves the values as they are: only its NaN/inf check is wanted
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, self._found, self._one)


class NonFinitePredictions:
    """Per task, the batches of a val/test epoch whose raw prediction held NaN/inf, counted on
    the device (no host read per batch); `warn` reads the counts once at the epoch's end."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.reset()

    def reset(self) -> None:
        """Start a new epoch."""
        self._counts: Tensor | None = None
        self._batches = 0

    def add(self, preds: Mapping[str, Tensor]) -> Tensor:
        """Count a batch; each task's flag (bool, [tasks]) of a NaN/inf in its prediction."""
        non_finite = torch.stack([preds[k].isfinite().all() for k in self.tasks]).logical_not()
        self._counts = non_finite.long() if self._counts is None else self._counts + non_finite
        self._batches += 1
        return non_finite

    def warn(self, split: str, epoch: int) -> None:
        """Warn (from rank 0) naming the tasks whose `split` metrics are NaN for the epoch."""
        if self._counts is None:
            return
        counts = dict(zip(self.tasks, self._counts.tolist(), strict=True))
        bad = {k: n for k, n in counts.items() if n}
        if bad:
            rank_zero_warn(
                f"non-finite (NaN/inf) {split} prediction of task(s) {list(bad)} in epoch {epoch} "
                f"(in {bad} of the {self._batches} batches): every {split} metric of these tasks "
                "is NaN for this epoch. The weights or the inputs hold NaN/inf (a diverged "
                "run, or a bad checkpoint).",
                category=NonFiniteWarning,
            )
