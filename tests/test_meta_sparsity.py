"""MetaSparsityModule: hypergradients against finite differences, the outer step, errors."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import default_collate

from lightning_mtl import MetaSparsityModule, ProxAdamW
from lightning_mtl.meta.inner_loop import adapt, group_lasso, group_lasso_grad
from lightning_mtl.sparsity.operators import group_lasso_euclidean
from tests.helpers import (
    TINY_META_DATA,
    csv_logger,
    tiny_datamodule,
    tiny_meta_module,
    tiny_trainer,
)


@pytest.fixture(scope="module")
def samples():
    """The tiny meta data's wrapped datamodule and its 16 training samples."""
    data = tiny_datamodule(None, **TINY_META_DATA)
    data.setup()
    return data, [data.datasets["train"][i] for i in range(16)]


def meta_batch(samples, dtype=torch.float32):
    _, items = samples

    def batch(indices):
        collated = default_collate([items[i] for i in indices])
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in collated.items()}

    return [
        {"tasks": ("seg", "depth"), "support": batch(range(4)), "query": batch(range(4, 8))},
        {"tasks": ("normal",), "support": batch(range(8, 12)), "query": batch(range(12, 16))},
    ]


#: the authors' variant of experiments/meta/variants/authors.yaml (the query split aside)
AUTHORS_VARIANT = {
    "inner_steps": 1,
    "inner_sparsity": "penalty",
    "first_order": True,
    "explicit_penalty": "adapted",
}


def tiny_meta(samples, **overrides) -> MetaSparsityModule:
    data, _ = samples
    torch.manual_seed(0)
    options = {"inner_steps": 2, "inner_lr": 0.05, "lambda_init": 0.05, **overrides}
    return tiny_meta_module(data, **options)


def outer_loss(module, batch):
    """The outer loss with a fixed dropout mask (the ASPP heads drop out), so that it is a
    deterministic function of θ and ρ."""
    torch.manual_seed(1)
    return module.meta_loss(batch).loss


def rho_finite_difference(module, batch, index=(), h=1e-5) -> float:
    rho = module.rho.data
    values = []
    for sign in (1, -1):
        rho[index] += sign * h
        values.append(outer_loss(module, batch).item())  # the inner loop needs autograd
        rho[index] -= sign * h
    return (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize(
    ("overrides", "index"),
    [
        ({}, ()),
        ({"inner_sparsity": "penalty"}, ()),
        ({"per_layer_lambda": True}, (3,)),
        ({"explicit_penalty": "meta"}, ()),
        ({"explicit_penalty": "adapted"}, ()),
        ({"first_order": True, "inner_steps": 1}, ()),
        ({"first_order": True, "inner_steps": 1, "inner_sparsity": "penalty"}, ()),
        (AUTHORS_VARIANT, ()),
    ],
    ids=[
        "prox",
        "penalty",
        "per-layer",
        "explicit-meta",
        "explicit-adapted",
        "first-order-prox",
        "first-order-penalty",
        "authors-variant",
    ],
)
def test_rho_hypergradient_matches_finite_differences(samples, overrides, index):
    # with one inner step the inner gradient does not depend on λ, so the first-order
    # hypergradient of ρ is exact too: a check that first_order keeps λ's path
    module = tiny_meta(samples, **overrides).double()
    batch = meta_batch(samples, torch.float64)
    (grad,) = torch.autograd.grad(outer_loss(module, batch), module.rho)
    expected = rho_finite_difference(module, batch, index)
    assert grad[index].item() == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert abs(expected) > 1e-6, "λ must influence the outer loss for the check to mean anything"


def test_second_order_theta_gradient_matches_finite_differences(samples):
    module = tiny_meta(samples).double()
    batch = meta_batch(samples, torch.float64)
    weight = module.model.backbone.layer2[0].conv1.weight
    direction = torch.randn_like(weight)
    direction /= direction.norm()
    (grad,) = torch.autograd.grad(outer_loss(module, batch), weight)
    h = 1e-6  # ReLU kinks of the tiny net lie ~1e-4 away along some directions
    values = []
    for sign in (1, -1):
        weight.data += sign * h * direction
        values.append(outer_loss(module, batch).item())  # the inner loop needs autograd
        weight.data -= sign * h * direction
    expected = (values[0] - values[1]) / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(expected, rel=1e-4)


def test_adapted_penalty_adds_lambda_omega_of_each_adapted_model(samples):
    # same θ, λ and batches with and without the term (eval: no dropout; the inner and query
    # passes use batch statistics either way): the difference is Σ_τ λ·Ω(φ_K^τ)
    batch = meta_batch(samples, torch.float64)
    losses = {}
    for mode in ("none", "adapted"):
        module = tiny_meta(samples, **{**AUTHORS_VARIANT, "explicit_penalty": mode}).double()
        losses[mode] = module.eval().meta_loss(batch).loss
    named = dict(module.model.named_parameters())
    name_of = {id(p): n for n, p in named.items()}
    lam = module.rho.exp()
    lambdas = {name_of[id(w)]: lam for _, w in module.sparse_weights()}
    expected = 0.0
    for meta_task in batch:
        keys = list(meta_task["tasks"])
        params = {n: p for n, p in named.items() if n.startswith("backbone.")}
        params |= {
            n: p for n, p in named.items() if n.split(".")[:2] in [["heads", k] for k in keys]
        }
        buffers = {n: b.clone() for n, b in module.model.named_buffers()}
        phi, _ = adapt(
            functools.partial(
                module._task_loss, buffers=buffers, keys=keys, batch=meta_task["support"]
            ),
            params,
            lambdas,
            steps=1,
            lr=module.hparams.inner_lr,
            sparsity="penalty",
            first_order=True,
        )
        expected += sum(float(lam * group_lasso(phi[n], "in_channel")) for n in lambdas)
    assert expected > 0
    assert float(losses["adapted"] - losses["none"]) == pytest.approx(expected, rel=1e-9)


def test_first_order_drops_the_hessian_terms(samples):
    batch = meta_batch(samples, torch.float64)
    grads = {}
    for first_order in (False, True):
        module = tiny_meta(samples, first_order=first_order).double()
        weight = module.model.backbone.layer2[0].conv1.weight
        (grads[first_order],) = torch.autograd.grad(outer_loss(module, batch), weight)
    assert not torch.allclose(grads[False], grads[True], rtol=1e-3)


def test_inner_prox_step_is_the_closed_form():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    target = torch.randn(4, 3, 3, 3)
    lam = torch.tensor(0.3)
    phi, losses = adapt(
        lambda p: 0.5 * (p["w"] - target).square().sum(), {"w": w}, {"w": lam}, steps=1, lr=0.1
    )
    z = w.detach() - 0.1 * (w.detach() - target)
    torch.testing.assert_close(phi["w"], group_lasso_euclidean(z, 0.1 * 0.3 * 6.0, "in_channel"))
    assert len(losses) == 1


def test_group_lasso_gradient_is_the_autograd_gradient_and_zero_on_dead_groups():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    w[:, 1] = 0
    leaf = w.clone().requires_grad_()
    (auto,) = torch.autograd.grad(0.7 * group_lasso(leaf, "in_channel"), leaf)
    torch.testing.assert_close(group_lasso_grad(w, 0.7, "in_channel"), auto)
    assert auto[:, 1].eq(0).all() and auto.isfinite().all()


def test_outer_step_updates_theta_and_rho_and_zeroes_groups(samples, tmp_path):
    module = tiny_meta(  # a strong outer prox; a weak inner one, so that λ gets a gradient
        samples,
        lambda_init=10.0,
        inner_lr=1e-3,
        rho_lr=0.05,
        optimizer=functools.partial(ProxAdamW, lr=0.05),
    )
    batch = meta_batch(samples)

    class OneBatch(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return batch

    loader = torch.utils.data.DataLoader(OneBatch(), batch_size=None)
    rho_before = module.rho.detach().clone()
    trainer = tiny_trainer(
        max_steps=3, logger=csv_logger(tmp_path), enable_checkpointing=False, log_every_n_steps=1
    )
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 3
    assert not torch.equal(module.rho.detach(), rho_before)
    assert module.current_lambda == pytest.approx(float(module.rho.exp()))
    dead = sum(int((w.detach() == 0).all(dim=(0, 2, 3)).sum()) for _, w in module.sparse_weights())
    assert dead > 0, "the outer prox leaves exact zero groups"
    logged = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "meta/inner_loss", "meta/query/seg+depth", "meta/query/normal",
                "lambda", "meta/rho_grad"):  # fmt: skip
        assert key in logged


def test_all_groups_dead_warns_and_keeps_training(samples):
    module = tiny_meta(samples, lambda_init=1e4)
    batch = meta_batch(samples)
    loader = torch.utils.data.DataLoader([batch, batch], batch_size=None, collate_fn=None)
    trainer = tiny_trainer(max_steps=2, enable_checkpointing=False)
    dead = "every channel group of the grouped convs is zero at step"
    with pytest.warns(UserWarning, match=dead):
        trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 2
    assert all(p.isfinite().all() for p in module.parameters())
    assert module.rho.grad is None or torch.isfinite(module.rho.grad).all()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lambda_init": 0.0}, "lambda_init must be a finite number > 0"),
        ({"lambda_init": -1e-3}, "lambda_init must be a finite number > 0"),
        ({"inner_steps": 0}, r"inner_steps \(K\) must be an int >= 1"),
        ({"inner_sparsity": "l0"}, "unknown inner_sparsity 'l0'"),
        ({"inner_lr": 0.0}, "inner_lr must be > 0"),
        ({"explicit_penalty": True}, r"unknown explicit_penalty True; allowed: \['none'"),
    ],
)
def test_bad_options_fail_at_construction(samples, overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_meta(samples, **overrides)


def test_meta_task_without_a_head_is_named(samples):
    module = tiny_meta(samples)
    batch = meta_batch(samples)
    batch[0]["tasks"] = ("seg", "edge")
    with pytest.raises(ValueError, match=r"tasks \['edge'\] this module has no head for"):
        module.meta_loss(batch)


def test_a_nan_query_loss_stops_meta_training_naming_the_meta_task(samples):
    from lightning_mtl.modules import NonFiniteError

    module = tiny_meta(samples)
    normal = module.tasks["normal"]
    loss = type(normal).loss
    normal.loss = lambda pred, target: loss(normal, pred, target) * float("nan")
    batch = meta_batch(samples)
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = tiny_trainer(max_steps=1, enable_checkpointing=False)
    with pytest.raises(NonFiniteError, match=r"step 0: task\(s\) \{'normal': nan\}"):
        trainer.fit(module, train_dataloaders=loader)
