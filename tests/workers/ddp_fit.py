"""Worker for test_ddp: a real 2-process CPU DDP (gloo) fit with the prox on, then a validate.

Run as `python tests/workers/ddp_fit.py OUT_DIR [--sync-batchnorm]`; Lightning's launcher re-runs
this script for rank 1. It fits `ddp_fit_setup()` (tests/helpers.py). Each rank saves
OUT_DIR/rank{r}.pt: its final state dict, the classes of its BatchNorm layers during fit, its
BatchNorm buffers after its last training step (before the epoch-end validation, whose first
forward broadcasts rank 0's buffers), a fingerprint of every training batch it saw, and the
metrics of a `trainer.validate` after fit on a validation split of 9 samples (rank 0 gets 5 in 2
batches, rank 1 gets 4 in 1 batch) with what it validated on.

`--train-compaction` fits with `TrainTimeCompaction` (every epoch, groups zero for one epoch)
and also saves the module's compaction plan.

`--sync-batchnorm` fits with `Trainer(sync_batchnorm=True)`. Torch's `SyncBatchNorm` runs on
GPUs only (no CPU kernels for its batch statistics, and DDP refuses a CPU module holding one),
so `GlooSyncBatchNorm`, a `TorchSyncBatchNorm` plugin that Lightning accepts with
`sync_batchnorm=True`, does Lightning's conversion to `SyncBatchNorm`, records it, and then
gives the converted layers a forward that syncs the batch statistics with a differentiable gloo
all-reduce (`_GlooSyncBatchNorm`, not a `SyncBatchNorm` subclass).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_mtl.callbacks import TrainTimeCompaction
from tests.helpers import DDP_TRAINER, ddp_fit_setup


class _GlooSyncBatchNorm(_BatchNorm):
    """A converted `SyncBatchNorm` whose training forward all-reduces the per-channel sums on
    CPU: the batch statistics of the global batch, as `SyncBatchNorm` computes them on GPUs."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)  # eval: the running statistics, nothing to sync
        c, dims = input.shape[1], [0, *range(2, input.dim())]
        count = input.new_tensor([input.numel() // c])
        stats = dist_nn.all_reduce(torch.cat([input.sum(dims), input.square().sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean.square()
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        shape = (1, c) + (1,) * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (input - mean.view(shape)) * scale.view(shape) + self.bias.view(shape)


class GlooSyncBatchNorm(TorchSyncBatchNorm):
    """Lightning's conversion to `SyncBatchNorm` (the classes it gave every BatchNorm layer are
    kept in `converted`), then a forward that syncs on CPU."""

    def __init__(self) -> None:
        self.converted: list[type] = []

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super().apply(model)
        self.converted = [type(m) for m in model.modules() if isinstance(m, _BatchNorm)]
        for module in model.modules():
            if type(module) is torch.nn.SyncBatchNorm:
                module.__class__ = _GlooSyncBatchNorm
        return model


def batchnorm_buffers(module: torch.nn.Module) -> dict[str, Tensor]:
    return {
        f"{name}.{b}": getattr(m, b).detach().clone()
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm)
        for b in ("running_mean", "running_var")
    }


class Record(L.Callback):
    """BatchNorm classes at the start of fit, BatchNorm buffers after the last training step,
    a fingerprint per training batch, and the sizes of the batches `validate` ran on."""

    def __init__(self) -> None:
        self.bn_classes: list[type] = []
        self.bn_after_last_step: dict[str, Tensor] = {}
        self.train_batches: list[float] = []
        self.validated: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.bn_classes = [type(m) for m in pl_module.modules() if isinstance(m, _BatchNorm)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train_batches.append(float(batch["image"].double().sum()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.bn_after_last_step = batchnorm_buffers(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self.validated.append(int(batch["image"].shape[0]))


def main(out: Path, sync_batchnorm: bool, train_compaction: bool) -> None:
    torch.set_num_threads(1)  # two processes on a small CPU: no oversubscription
    L.seed_everything(0)
    data, model = ddp_fit_setup()
    record, layer_sync = Record(), GlooSyncBatchNorm()
    compaction = [TrainTimeCompaction(round_to=None)] if train_compaction else []
    trainer = L.Trainer(
        **DDP_TRAINER,
        callbacks=[record, *compaction],
        sync_batchnorm=sync_batchnorm,
        plugins=[layer_sync] if sync_batchnorm else None,
    )
    trainer.fit(model, data)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    (val_metrics,) = trainer.validate(model, data, verbose=False)
    torch.save(
        {
            "state_dict": state_dict,
            "bn_classes": [c.__name__ for c in record.bn_classes],
            "bn_converted": [c.__name__ for c in layer_sync.converted],
            "bn_after_last_step": record.bn_after_last_step,
            "train_batches": record.train_batches,
            "val_metrics": val_metrics,
            "validated": record.validated,
            "compaction_plan": model.compaction_plan.to_data(),
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    flags = sys.argv[2:]
    main(
        Path(sys.argv[1]),
        sync_batchnorm="--sync-batchnorm" in flags,
        train_compaction="--train-compaction" in flags,
    )
