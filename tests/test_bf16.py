"""bf16-mixed on CPU: autocast runs the model in bfloat16 while the parameters, their gradients,
the optimizer and the prox stay float32; losses stay finite, groups still die at a large λ,
validation reports its metrics, and checkpoints reload and resume."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_mtl import MultiTaskLightningModule, ProxAdamW
from lightning_mtl.sparsity import live_groups
from tests.helpers import (
    META_PRUNING,
    tiny_datamodule,
    tiny_meta_datamodule,
    tiny_meta_module,
    tiny_module,
    tiny_trainer,
)


def _why_no_cpu_bf16_autocast() -> str | None:
    """Why this CPU cannot run bf16 autocast, or None when it can."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = F.conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3))
    except RuntimeError as error:
        return f"bf16 autocast fails on this CPU: {error}"
    if out.dtype != torch.bfloat16:
        return f"CPU autocast ran conv2d in {out.dtype}, not bfloat16"
    return None


_NO_BF16 = _why_no_cpu_bf16_autocast()
pytestmark = [
    pytest.mark.skipif(_NO_BF16 is not None, reason=_NO_BF16 or ""),
    pytest.mark.usefixtures("one_thread"),
]


class RecordDtypes(L.Callback):
    """The dtypes the model computed in and the optimizer saw, and the training losses."""

    def __init__(self) -> None:
        self.outputs: set[torch.dtype] = set()
        self.params: set[torch.dtype] = set()
        self.grads: set[torch.dtype] = set()
        self.losses: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        def record(module, inputs, outputs) -> None:
            if module.training:
                self.outputs.update(v.dtype for v in outputs.values())

        pl_module.model.register_forward_hook(record)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.params.update(p.dtype for p in params)
        self.grads.update(p.grad.dtype for p in params if p.grad is not None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach().float())

    def check(self) -> None:
        assert self.outputs == {torch.bfloat16}, "autocast ran the model in bfloat16"
        assert self.params == self.grads == {torch.float32}, "the optimizer and prox see fp32"
        assert self.losses and all(bool(torch.isfinite(loss)) for loss in self.losses)


def _trainer(root, **kwargs) -> L.Trainer:
    return tiny_trainer(root, **{"precision": "bf16-mixed", **kwargs})


def _dead_groups(module: MultiTaskLightningModule) -> int:
    return sum(int((~live_groups(w, "in_channel")).sum()) for _, w in module.sparse_weights())


def test_bf16_mixed_fit_prunes_validates_and_reloads(tmp_path):
    L.seed_everything(0)
    data = tiny_datamodule()
    module = tiny_module(data, lambda_=0.5, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    record = RecordDtypes()
    trainer = _trainer(tmp_path, callbacks=[record], enable_checkpointing=False)
    trainer.fit(module, data)
    record.check()
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert _dead_groups(module) > 0, "the prox zeroes whole groups of the float32 weights"

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    expected = {"val/loss", "val/seg/miou", "val/depth/abs_err", "val/normal/mean_angle"}
    assert expected <= metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values()), metrics

    path = tmp_path / "bf16.ckpt"
    trainer.save_checkpoint(path)
    loaded = MultiTaskLightningModule.load_from_checkpoint(path)
    for name, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    # the reloaded weights validate to the same metrics under bf16-mixed
    (again,) = _trainer(tmp_path).validate(loaded, data, verbose=False)
    for name, value in metrics.items():
        assert again[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name

    # and the checkpoint resumes: one more epoch, still finite, still pruned
    resumed = tiny_module(data, lambda_=0.5, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    record = RecordDtypes()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[record], enable_checkpointing=False)
    trainer.fit(resumed, data, ckpt_path=path)
    assert trainer.global_step == 2 * len(data.train_dataloader())
    record.check()
    assert _dead_groups(resumed) > 0


def test_bf16_mixed_meta_sparsity_steps(tmp_path):
    """The meta module's second-order inner loop (torch.func under autocast) and its manual
    outer step under bf16-mixed: finite losses, fp32 θ and ρ, and ρ gets a hypergradient."""
    L.seed_everything(0)
    data = tiny_meta_datamodule(meta_batches_per_epoch=2)
    module = tiny_meta_module(data, **META_PRUNING)
    rho = module.rho.detach().clone()
    record = RecordDtypes()
    trainer = _trainer(tmp_path, callbacks=[record], enable_checkpointing=False)
    trainer.fit(module, data)
    assert trainer.global_step == 2
    record.check()
    assert module.rho.dtype == torch.float32 and not torch.equal(module.rho.detach(), rho)
    assert math.isfinite(float(trainer.callback_metrics["val/seg/miou"]))
