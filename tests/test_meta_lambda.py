"""Meta-learned λ on a constructed problem: it rises where input channels are pure noise and
falls where every channel matters (the functional inner loop + the ProxAdamW outer step)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_mtl import ProxAdamW
from lightning_mtl.meta.inner_loop import adapt

C_IN = 16  # input channels = the groups of the 1×1 conv's weight [1, C_IN, 1, 1]
SIGNAL = 3  # the "noise" problem's channels with a true weight; the other 13 are pure noise


#: the tensors are tiny: intra-op threads only add synchronisation (10× slower on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def meta_train(
    all_matter: bool,
    seed: int,
    lambda_init: float,
    sparsity: str = "prox",
    outer_steps: int = 100,
    meta_tasks: int = 2,
) -> tuple[list[float], Tensor]:
    """Meta-train θ (a bias-free 1×1 conv C_IN → 1) and ρ = log λ as MetaSparsityModule does.

    Each meta-task is a regression y = w_τ·x + noise, w_τ = w* plus a per-task variation on the
    channels that matter (so the inner step has something to adapt), with a small support set
    (64 pixels for 16 weights: one inner step of lr 0.4 overfits its noise) and a larger query
    set. The outer loss is the query MSE after one inner step; ProxAdamW updates θ and ρ, the θ
    group's lambda_ set to the current exp(ρ) first. Returns λ after every outer step and θ.
    """
    gen = torch.Generator().manual_seed(seed)
    matter = torch.ones(C_IN, dtype=torch.bool) if all_matter else torch.arange(C_IN) < SIGNAL
    sign = torch.randint(0, 2, (C_IN,), generator=gen) * 2 - 1
    w_star = (1 + torch.rand(C_IN, generator=gen)) * sign * matter
    conv = nn.Conv2d(C_IN, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.uniform_(-0.25, 0.25, generator=gen)
    theta = conv.weight
    rho = nn.Parameter(torch.tensor(math.log(lambda_init)))
    optimizer = ProxAdamW(
        [
            {"params": [theta], "layers": ["w"], "lambda_": lambda_init, "prox_metric": "adaptive"},
            {"params": [rho], "lr": 0.05, "lambda_": 0.0},
        ],
        lr=0.02,
    )

    def batch(w: Tensor, n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, C_IN, 4, 4, generator=gen)
        y = torch.einsum("nchw,c->nhw", x, w).unsqueeze(1)
        return x, y + 0.5 * torch.randn(y.shape, generator=gen)

    def mse(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        return (functional_call(conv, params, (data[0],)) - data[1]).square().mean()

    lambdas = []
    for _ in range(outer_steps):
        lam = rho.exp()
        loss = theta.new_zeros(())
        for _ in range(meta_tasks):
            w = w_star + 0.3 * torch.randn(C_IN, generator=gen) * matter
            support, query = batch(w, 4), batch(w, 16)
            phi, _ = adapt(
                lambda p, s=support: mse(p, s),
                {"weight": theta},
                {"weight": lam},
                steps=1,
                lr=0.4,
                sparsity=sparsity,
            )
            loss = loss + mse(phi, query)
        theta.grad, rho.grad = torch.autograd.grad(loss, [theta, rho])
        optimizer.set_lambda({"w": float(rho.detach().exp())})
        optimizer.step()
        lambdas.append(float(rho.detach().exp()))
    return lambdas, theta.detach().flatten()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_rises_when_most_input_channels_are_noise(seed):
    """From λ = 1e-3, λ grows (~150× observed) until the outer prox zeroes the noise channels;
    the signal channels stay live. A wrong hypergradient sign drives λ to ~1e-4 instead.

    Only the inner prox is covered: with `sparsity="penalty"` (K = 1) λ falls here, since the
    penalty's subgradient is taken at θ, where noise channels are (near) zero, not at the point
    that overfit the support noise; see the all-matter test for the penalty."""
    lambdas, weight = meta_train(all_matter=False, seed=seed, lambda_init=1e-3)
    assert lambdas[-1] > 10 * 1e-3
    noise_zero = weight[SIGNAL:] == 0
    assert int(noise_zero.sum()) >= 10, weight
    assert bool((weight[:SIGNAL] != 0).all()), weight


@pytest.mark.parametrize("sparsity", ["prox", "penalty"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_falls_when_every_input_channel_matters(sparsity, seed):
    """From λ = 0.3, λ shrinks (~9× observed) and no channel is zeroed. A wrong hypergradient
    sign drives λ past 10 and zeroes every channel instead."""
    lambdas, weight = meta_train(all_matter=True, seed=seed, lambda_init=0.3, sparsity=sparsity)
    assert lambdas[-1] < 0.3 / 3
    assert bool((weight != 0).all()), weight
