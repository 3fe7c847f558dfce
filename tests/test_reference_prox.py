"""The reference-compatible mode: the prox in the uncorrected metric √v + ε, and Adam restarted
every epoch (`ResetOptimizerState`)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from lightning_mtl import ProxAdamW
from lightning_mtl.callbacks import ResetOptimizerState
from lightning_mtl.sparsity import GroupSparsity
from lightning_mtl.sparsity.groups import group_size
from lightning_mtl.sparsity.operators import PROX_OPERATORS, register_prox_operator
from tests.helpers import restored_registries, tiny_datamodule, tiny_module, tiny_trainer

BETA2 = 0.999


def _weight(seed: int = 0) -> Tensor:
    """A [3, 4, 2, 2] conv weight with a gradient."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 4, 2, 2, generator=generator).requires_grad_()
    weight.grad = torch.randn(3, 4, 2, 2, generator=generator)
    return weight


@pytest.mark.parametrize("amsgrad", [False, True])
def test_uncorrected_step_is_adamw_then_the_prox_in_sqrt_v_plus_eps(amsgrad):
    lr, lam, eps = 1e-2, 2.5, 1e-6
    ref, mine = _weight(), _weight()
    adamw = torch.optim.AdamW([ref], lr=lr, eps=eps, weight_decay=0.0, amsgrad=amsgrad)
    opt = ProxAdamW([mine], lr=lr, eps=eps, amsgrad=amsgrad, lambda_=lam, prox_metric="uncorrected")
    for _ in range(3):
        adamw.step()
        opt.step()
        with torch.no_grad():
            v = adamw.state[ref]["max_exp_avg_sq" if amsgrad else "exp_avg_sq"]
            d = v.sqrt() + eps  # no bias correction
            ref.copy_(PROX_OPERATORS.get("group_lasso")(ref.clone(), d, lr * lam, "in_channel"))
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-7)
    assert (mine == 0).any()  # the prox did something


def test_uncorrected_closed_form_at_step_one():
    """A gradient of one magnitude per group makes d constant in each group at step 1:
    d = √(1 − β₂)·|g| + ε, and the prox is W_g·max(0, 1 − αλ√p_g / (d‖W_g‖))."""
    lr, lam, eps = 1e-2, 4.0, 1e-8
    weight = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0]).view(1, 4, 1, 1)
    grad = scale * torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(2)).sign()
    param = weight.clone().requires_grad_()
    param.grad = grad
    ProxAdamW([param], lr=lr, eps=eps, lambda_=lam, prox_metric="uncorrected").step()
    z = weight - lr * grad.sign() * scale / (scale + eps)  # Adam's step 1: m̂/(√v̂+ε) ≈ sign(g)
    d = math.sqrt(1 - BETA2) * scale + eps
    norms = z.square().sum(dim=(0, 2, 3), keepdim=True).sqrt()
    expected = z * (1 - lr * lam * math.sqrt(group_size(z, "in_channel")) / (d * norms)).clamp(0)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6)
    assert (expected == 0).all(dim=(0, 2, 3)).any() and (expected != 0).any()


@pytest.mark.parametrize("step", [1, 5, 100])
def test_uncorrected_threshold_is_one_over_sqrt_bias_correction_stronger(step):
    """The prox threshold αλ/d_i of the uncorrected metric is 1/√(1 − β₂^t) times the default's:
    31.6× at step 1, 14.2× at step 5, 3.2× at step 100."""
    seen: dict[str, Tensor] = {}
    with restored_registries():

        @register_prox_operator("capture_metric")
        def capture(z: Tensor, d: Tensor | None, step_size: float, group_by: str) -> Tensor:
            seen["d"] = d.clone()
            return z

        thresholds = {}
        for metric in ("adaptive", "uncorrected"):
            weight = _weight()
            opt = ProxAdamW(
                [weight],
                lr=1e-2,
                eps=0.0,
                lambda_=1.0,
                prox_metric=metric,
                penalty="capture_metric",
            )
            for _ in range(step):
                opt.step()
            thresholds[metric] = 1e-2 * 1.0 / seen["d"]
    ratio = thresholds["uncorrected"] / thresholds["adaptive"]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / math.sqrt(1 - BETA2**step)))
    assert {1: 31.6, 5: 14.2, 100: 3.2}[step] == pytest.approx(ratio.mean().item(), abs=0.05)


def test_uncorrected_kills_groups_the_default_keeps():
    """At step 1 a group dies iff ‖D Z_g‖ ≤ αλ√p_g; D is √(1 − β₂) = ~0.0316 times the default's
    in the uncorrected metric, so a λ between the two critical values kills only there."""
    lr = 1e-2
    ref = _weight()
    adamw = torch.optim.AdamW([ref], lr=lr, eps=1e-12, weight_decay=0.0)
    adamw.step()
    v = adamw.state[ref]["exp_avg_sq"]
    root_p = math.sqrt(group_size(ref, "in_channel"))
    critical = {
        metric: ((v.sqrt() / scale + 1e-12) * ref.detach()).square().sum(dim=(0, 2, 3)).sqrt()
        / (lr * root_p)
        for metric, scale in (("adaptive", math.sqrt(1 - BETA2)), ("uncorrected", 1.0))
    }
    torch.testing.assert_close(
        critical["uncorrected"] / critical["adaptive"], torch.full((4,), math.sqrt(1 - BETA2))
    )
    assert critical["uncorrected"].max() < critical["adaptive"].min()
    lam = math.sqrt(critical["uncorrected"].max() * critical["adaptive"].min())
    dead = {}
    for metric in ("adaptive", "uncorrected"):
        weight = _weight()
        ProxAdamW([weight], lr=lr, eps=1e-12, lambda_=lam, prox_metric=metric).step()
        dead[metric] = (weight == 0).all(dim=(0, 2, 3))
    assert not dead["adaptive"].any() and dead["uncorrected"].all()


def test_bad_prox_metric_lists_the_choices():
    for build in (
        lambda: GroupSparsity(prox_metric="raw"),
        lambda: ProxAdamW([_weight()], prox_metric="raw"),
    ):
        with pytest.raises(ValueError, match=r"adaptive.*euclidean.*uncorrected"):
            build()


# -- ResetOptimizerState in real runs ------------------------------------------------------------


class _StepsSeen(L.Callback):
    """Adam's step count of the first 4-D weight at each epoch's first batch and its end."""

    def __init__(self) -> None:
        self.first_batch: list[int] = []
        self.epoch_end: list[int] = []

    @staticmethod
    def _step(trainer: L.Trainer) -> int:
        state = trainer.optimizers[0].state
        steps = [int(s["step"]) for p, s in state.items() if p.dim() == 4]
        return steps[0] if steps else 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first_batch.append(self._step(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_end.append(self._step(trainer))


@pytest.mark.parametrize(
    ("reset", "first_batch", "epoch_end"), [(True, [0, 0], [4, 4]), (False, [0, 4], [4, 8])]
)
def test_state_restarts_each_epoch_only_when_asked(reset, first_batch, epoch_end, tmp_path):
    data = tiny_datamodule()  # 16 train images, batch 4: 4 steps per epoch
    module = tiny_module(data, lambda_=0.05, reset_optimizer_every_epoch=reset)
    assert any(isinstance(c, ResetOptimizerState) for c in module.configure_callbacks()) == reset
    seen = _StepsSeen()
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[seen], enable_checkpointing=False)
    trainer.fit(module, data)
    assert (seen.first_batch, seen.epoch_end) == (first_batch, epoch_end)
    group = trainer.optimizers[0].param_groups[0]
    assert group["lambda_"] == 0.05 and group["prox_metric"] == "adaptive"


def _fit(root: Path, max_epochs: int, ckpt_path: str | None = None, **checkpointing):
    L.seed_everything(3)
    data = tiny_datamodule()
    module = tiny_module(
        data,
        lambda_=0.05,
        prox_metric="uncorrected",
        reset_optimizer_every_epoch=True,
        optimizer=functools.partial(ProxAdamW, lr=1e-2),
    )
    ckpt = ModelCheckpoint(dirpath=root, save_last=True, **checkpointing)
    trainer = tiny_trainer(root, max_epochs=max_epochs, deterministic=True, callbacks=[ckpt])
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.slow
def test_resume_at_an_epoch_boundary_and_mid_epoch_resets_like_a_straight_run(tmp_path):
    """3 epochs straight == 1 epoch + resume == resume from a mid-epoch-1 checkpoint (step 6,
    after that epoch's reset: it must not reset again)."""
    straight, straight_trainer = _fit(
        tmp_path / "straight", 3, every_n_train_steps=6, save_top_k=-1, filename="{step}"
    )
    _fit(tmp_path / "split", 1)
    resumed = [
        _fit(tmp_path / "split", 3, ckpt_path=str(tmp_path / "split" / "last.ckpt")),
        _fit(tmp_path / "mid", 3, ckpt_path=str(tmp_path / "straight" / "step=6.ckpt")),
    ]
    for module, trainer in resumed:
        assert trainer.global_step == straight_trainer.global_step == 12
        for (name, a), (_, b) in zip(
            straight.state_dict().items(), module.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
        opt_a = straight_trainer.optimizers[0].state_dict()["state"]
        opt_b = trainer.optimizers[0].state_dict()["state"]
        assert opt_a.keys() == opt_b.keys()
        for key, state in opt_a.items():
            for name, value in state.items():
                assert torch.equal(value, opt_b[key][name]), (key, name)
    assert int(next(iter(opt_a.values()))["step"]) == 4  # restarted at epoch 2's start
