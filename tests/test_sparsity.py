"""The prox operators, ProxAdamW and sparsity_stats against closed forms, KKT and brute force."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from lightning_mtl.sparsity import (
    PROX_OPERATORS,
    GroupSparsity,
    ProxAdamW,
    group_size,
    list_prox_operators,
    live_groups,
    operators,
    register_prox_operator,
    sparsity_stats,
)
from lightning_mtl.sparsity.groups import group_sum
from lightning_mtl.sparsity.operators import ProxOperator, group_lasso
from lightning_mtl.sparsity.stats import dead_groups_warning

GROUP_BYS = ["in_channel", "out_channel"]


def _groups(w: torch.Tensor, group_by: str) -> list[torch.Tensor]:
    """Each group's elements as a flat vector, by explicit indexing (independent of the prox)."""
    if group_by == "in_channel":
        return [w[:, i].reshape(-1) for i in range(w.shape[1])]
    return [w[o].reshape(-1) for o in range(w.shape[0])]


@pytest.mark.parametrize("group_by", GROUP_BYS)
def test_euclidean_prox_is_the_closed_form(group_by):
    torch.manual_seed(0)
    z = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    t = float(torch.stack([g.norm() for g in _groups(z, group_by)]).median())
    w = operators.group_lasso_euclidean(z, t, group_by)
    for zg, wg in zip(_groups(z, group_by), _groups(w, group_by), strict=True):
        expected = zg * max(0.0, 1 - t / float(zg.norm()))
        torch.testing.assert_close(wg, expected, rtol=1e-12, atol=1e-14)
    assert (~live_groups(w, group_by)).sum() > 0, "threshold chosen so that some groups die"


def _adaptive_case(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(16, 12, 3, 3, generator=g, dtype=dtype)
    # Adam's metric varies over orders of magnitude inside a group
    d = torch.exp(1.5 * torch.randn(16, 12, 3, 3, generator=g, dtype=dtype))
    return z, d


@pytest.mark.parametrize("group_by", GROUP_BYS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("newton_steps", "tolerance"), [(group_lasso.ADAPTIVE_NEWTON_STEPS, 1e-5), (None, 1e-12)]
)
def test_adaptive_prox_satisfies_kkt(group_by, seed, newton_steps, tolerance):
    """The fixed step count of accelerators reaches float32 precision on a metric spanning ~4
    decades inside a group; on CPU the solver iterates to the dtype's (here float64) precision."""
    z, d = _adaptive_case(seed)
    dz_norms = torch.stack(
        [
            (dg * zg).norm()
            for zg, dg in zip(_groups(z, group_by), _groups(d, group_by), strict=True)
        ]
    )
    t = float(dz_norms.median())  # about half of the groups die
    w = operators.group_lasso_adaptive(z, d, t, group_by, newton_steps=newton_steps)
    n_live = 0
    for zg, dg, wg, dzn in zip(
        _groups(z, group_by), _groups(d, group_by), _groups(w, group_by), dz_norms, strict=True
    ):
        if dzn <= t:
            assert torch.all(wg == 0), "zero iff ||D z|| <= t"
            continue
        n_live += 1
        assert wg.norm() > 0
        # stationarity: d_i (w_i - z_i) + t w_i / ||w|| = 0
        residual = dg * (wg - zg) + t * wg / wg.norm()
        assert float(residual.abs().max()) < tolerance * float((dg * zg).abs().max())
    assert 0 < n_live < len(dz_norms)


def test_adaptive_prox_matches_a_brute_force_solve():
    z, d = _adaptive_case(7)
    z, d = z[:3, :4, :1, :2].contiguous(), d[:3, :4, :1, :2].contiguous()  # groups of 6 elements
    t = 0.6 * float((d * z)[:, 0].norm())
    w = operators.group_lasso_adaptive(z, d, t, "in_channel")
    for zg, dg, wg in zip(
        _groups(z, "in_channel"), _groups(d, "in_channel"), _groups(w, "in_channel"), strict=True
    ):
        zn, dn = zg.numpy(), dg.numpy()

        def objective(x, zn=zn, dn=dn):
            return 0.5 * np.sum(dn * (x - zn) ** 2) + t * np.linalg.norm(x)

        best = min(
            (
                minimize(objective, x0, method="Powell", options={"xtol": 1e-12, "ftol": 1e-15})
                for x0 in (zn, np.zeros_like(zn) + 1e-3, 0.5 * zn)
            ),
            key=lambda r: r.fun,
        )
        assert objective(wg.numpy()) <= best.fun + 1e-10
        np.testing.assert_allclose(wg.numpy(), best.x, atol=1e-5)


def test_adaptive_prox_with_equal_metric_is_the_scaled_euclidean_prox():
    z, _ = _adaptive_case(3)
    d = torch.full_like(z, 4.0)
    t = 3.0
    expected = operators.group_lasso_euclidean(z, t / 4.0, "in_channel")
    torch.testing.assert_close(operators.group_lasso_adaptive(z, d, t, "in_channel"), expected)


def test_prox_keeps_nan_visible():
    z = torch.randn(4, 3, 1, 1)
    z[0, 1] = float("nan")
    d = torch.ones_like(z)
    assert operators.group_lasso_adaptive(z, d, 0.1, "in_channel")[:, 1].isnan().all()
    assert operators.group_lasso_euclidean(z, 0.1, "in_channel")[:, 1].isnan().all()


def test_l1_prox_soft_thresholds():
    z = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    torch.testing.assert_close(
        operators.soft_threshold(z, 1.0), torch.tensor([-1.0, 0.0, 0.0, 0.0, 0.5])
    )


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 4, 3, 3), (16, 8, 1, 1), (16,)]
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def _clone(params):
    out = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(out, params, strict=True):
        p.grad = q.grad.clone()
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize(("kernel", "fused"), [("auto", True), ("eager", None)])
def test_lambda_zero_is_adamw_bit_for_bit(weight_decay, kernel, fused):
    """λ = 0 is torch's AdamW: its fused CPU kernel by default, its default one eagerly."""
    a, b = _params(), _params()
    ref = torch.optim.AdamW(a, lr=1e-2, eps=1e-6, weight_decay=weight_decay, fused=fused)
    opt = ProxAdamW(b, lr=1e-2, eps=1e-6, weight_decay=weight_decay, lambda_=0.0, kernel=kernel)
    for _ in range(3):
        ref.step()
        opt.step()
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("prox_name", "penalty"),
    [
        ("adaptive", "group_lasso"),
        ("euclidean", "group_lasso"),
        ("adaptive", "l1"),
        ("euclidean", "l1"),
    ],
)
@pytest.mark.parametrize("block_elements", [1 << 17, 40])
def test_step_is_adamw_step_then_prox(prox_name, penalty, block_elements, monkeypatch):
    """The eager path: whole layers, and layers cut into blocks of groups (40 elements: several
    per layer). (The compiled kernel is checked against it in test_prox_kernel.py.)"""
    monkeypatch.setattr("lightning_mtl.sparsity.optimizer.PROX_BLOCK_ELEMENTS", block_elements)
    lr, lam, wd = 1e-2, 0.5, 0.01
    a, b = _params(1), _params(1)
    ref = torch.optim.AdamW(a, lr=lr, eps=1e-6, weight_decay=wd)
    opt = ProxAdamW(
        b,
        lr=lr,
        eps=1e-6,
        weight_decay=wd,
        lambda_=lam,
        prox_metric=prox_name,
        penalty=penalty,
        kernel="eager",
    )
    for step in range(1, 4):
        ref.step()
        opt.step()
        with torch.no_grad():
            for p in a:
                if p.dim() != 4:
                    continue
                state = ref.state[p]
                d = state["exp_avg_sq"].sqrt() / math.sqrt(1 - 0.999**step) + 1e-6
                if penalty == "l1":
                    thr = lr * lam if prox_name == "euclidean" else lr * lam / d
                    p.copy_(operators.soft_threshold(p, thr))
                    continue
                t = lr * lam * math.sqrt(group_size(p, "in_channel"))
                if prox_name == "euclidean":
                    p.copy_(operators.group_lasso_euclidean(p, t, "in_channel"))
                else:
                    p.copy_(operators.group_lasso_adaptive(p, d, t, "in_channel"))
        for p, q in zip(a, b, strict=True):
            # the adaptive solver stops per block once converged, and a block's group sums may
            # round differently from the whole layer's (the matrix-vector kernel depends on the
            # width): equal to float precision; closed forms on whole layers are bit-identical
            exact = (prox_name == "euclidean" or penalty == "l1") and block_elements > 1000
            torch.testing.assert_close(q, p, rtol=0 if exact else 1e-6, atol=0 if exact else 1e-9)
    assert torch.equal(b[2], a[2]), "1-D parameters are never proxed"


def test_prox_makes_exact_zero_groups_and_respects_group_overrides():
    params = _params(2)
    dense = _params(2)[:2]
    opt = ProxAdamW([{"params": params}, {"params": dense, "lambda_": 0.0}], lr=0.1, lambda_=50.0)
    opt.step()
    stats = sparsity_stats({"a": params[0], "b": params[1]})
    assert stats.group_pct == 100.0 and stats.param_pct == 100.0
    assert torch.count_nonzero(params[0]) == 0
    assert all(torch.count_nonzero(p) == p.numel() for p in dense)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lambda_": -1.0}, "lambda_ must be"),
        ({"lambda_": float("nan")}, "lambda_ must be"),
        ({"prox_metric": "fista"}, "unknown prox_metric 'fista'"),
        ({"group_by": "kernel"}, "unknown group_by 'kernel'"),
        ({"penalty": "l0"}, "unknown penalty 'l0'"),
    ],
)
def test_bad_options_are_rejected_with_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProxAdamW(_params(), **kwargs)
    with pytest.raises(ValueError, match=message):
        ProxAdamW([{"params": _params(), **kwargs}])


def test_sparsity_stats_counts_by_hand():
    w1 = torch.ones(2, 3, 1, 1)
    w1[:, 0] = 0  # one zero input group of 3 (2 elements)
    w1[0, 1] = 0  # a zero element in a live group
    w2 = torch.ones(4, 2, 3, 3)
    w2[:, 1] = 0  # one zero input group of 2 (36 elements)
    stats = sparsity_stats({"a": w1, "b": w2})
    assert stats.num_groups == 5 and stats.zero_groups == 2
    assert stats.group_pct == pytest.approx(40.0)
    assert stats.num_params == 6 + 72 and stats.zero_params == 3 + 36
    assert stats.param_pct == pytest.approx(100 * 39 / 78)
    assert stats.layers == {"a": pytest.approx(2 / 3), "b": 0.5}
    out = sparsity_stats({"a": w1, "b": w2}, group_by="out_channel")
    assert out.zero_groups == 0 and out.layers == {"a": 1.0, "b": 1.0}


def test_lambda_api_reads_and_sets_per_layer_and_per_group():
    w = _params(3)
    opt = ProxAdamW(
        [
            {"params": w[:2], "layers": ["a", "b"], "lambda_": 0.1},
            {"params": [w[2]], "layers": ["c"], "lambda_": 0.2},
            {"params": _params(1)[:2]},  # a dense group without layers keeps λ = 0
        ]
    )
    assert opt.lambdas() == {"a": 0.1, "b": 0.1, "c": 0.2}
    opt.set_lambda(0.0)
    assert opt.lambdas() == {"a": 0.0, "b": 0.0, "c": 0.0}
    opt.set_lambda({"c": 0.5})
    assert opt.lambdas() == {"a": 0.0, "b": 0.0, "c": 0.5}
    opt.set_lambda({"a": 0.3, "b": 0.3, "c": 0.4})
    assert opt.lambdas() == {"a": 0.3, "b": 0.3, "c": 0.4}
    assert opt.param_groups[2]["lambda_"] == 0.0
    with pytest.raises(ValueError, match=r"layers \['a', 'b'\] share one param group"):
        opt.set_lambda({"a": 0.1, "b": 0.2})
    with pytest.raises(ValueError, match=r"layers \['a', 'b'\] share one param group"):
        opt.set_lambda({"a": 0.1})
    with pytest.raises(ValueError, match=r"unknown layers \['z'\]; the named layers are"):
        opt.set_lambda({"z": 0.1})
    with pytest.raises(ValueError, match="lambda_ must be"):
        opt.set_lambda(-1.0)
    with pytest.raises(ValueError, match="must name each of its 2 params"):
        ProxAdamW([{"params": w[:2], "layers": ["a"]}])


def test_set_lambda_without_named_layers_sets_every_group():
    opt = ProxAdamW(_params(1), lr=0.1, lambda_=0.1)
    assert opt.lambdas() == {}
    opt.set_lambda(50.0)
    assert opt.param_groups[0]["lambda_"] == 50.0
    opt.step()
    assert torch.count_nonzero(opt.param_groups[0]["params"][0]) == 0


def test_a_registered_prox_operator_is_selected_by_penalty():
    """Adding a prox operator is one function and its registration; `penalty=` selects it."""

    @register_prox_operator("group_hard_threshold")
    def hard(z, d, step_size, group_by, group_size=None):
        norms = group_sum(z.square(), group_by).sqrt()
        return z * (norms > step_size)  # keep a group whole or drop it whole

    try:
        assert "group_hard_threshold" in list_prox_operators()
        w = torch.ones(2, 3, 1, 1)
        w[:, 1] = 0.1  # input group 1 has norm 0.1·√2 ≈ 0.14
        opt = ProxAdamW([w], lr=0.0, lambda_=1.0, penalty="group_hard_threshold")
        w.grad = torch.zeros_like(w)
        opt.param_groups[0]["lr"] = 0.2  # step_size = lr·λ = 0.2 after a zero-gradient step
        opt.step()
        expected = torch.ones(2, 3, 1, 1)
        expected[:, 1] = 0
        assert torch.equal(w.detach(), expected)
        assert (
            GroupSparsity(lambda_=1.0, penalty="group_hard_threshold").penalty
            == "group_hard_threshold"
        )
    finally:
        PROX_OPERATORS.unregister("group_hard_threshold")
    with pytest.raises(ValueError, match=r"unknown penalty 'group_hard_threshold'; choose one of"):
        GroupSparsity(penalty="group_hard_threshold")


def _documented_operator() -> Callable[..., torch.Tensor]:
    """docs/sparsity.md's example operator (`hard_threshold`), defined and registered from the
    page's own code."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "sparsity.md").read_text()
    example = next(
        block
        for block in re.findall(r"^```python\n(.*?)^```$", page, re.MULTILINE | re.DOTALL)
        if '@register_prox_operator("hard_threshold")' in block
    )
    definitions = [
        node
        for node in ast.parse(example).body
        if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef)
    ]
    namespace: dict[str, object] = {}
    exec(compile(ast.Module(definitions, type_ignores=[]), "docs/sparsity.md", "exec"), namespace)
    return namespace["hard_threshold"]  # type: ignore[return-value]


def _parameters(function: Callable[..., object]) -> list[tuple[str, object]]:
    """A function's parameter names and defaults."""
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_documented_operator_runs_under_group_sizes(registries):
    """An operator written as the docs write one takes the `group_size=` the optimizer passes
    once a param group sets `group_sizes` (train-time compaction), and its parameters are
    `ProxOperator`'s."""
    operator = _documented_operator()
    assert _parameters(operator) == _parameters(ProxOperator.__call__)[1:]  # less `self`
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    opt = ProxAdamW(
        [{"params": [w], "group_sizes": [2 * 4 * 9]}],  # as if compaction halved O
        lr=0.1,
        lambda_=0.1,
        penalty="hard_threshold",
        kernel="eager",
    )
    w.grad = torch.randn_like(w)
    opt.step()
    assert 0 < int((w == 0).sum()) < w.numel()


def test_an_operator_gets_the_group_size_that_group_sizes_sets(registries):
    """`group_size` is the p_g that `group_sizes` sets for a param, None for the others."""
    given: list[int | None] = []

    @register_prox_operator("recording")
    def recording(z, d, step_size, group_by, group_size=None):
        given.append(group_size)
        return z

    set_size, own_size = (torch.zeros(2, 3, 1, 1, requires_grad=True) for _ in range(2))
    opt = ProxAdamW(
        [{"params": [set_size], "group_sizes": [4]}, {"params": [own_size]}],
        lr=0.1,
        lambda_=0.1,
        penalty="recording",
        kernel="eager",
    )
    for w in (set_size, own_size):
        w.grad = torch.zeros_like(w)
    opt.step()
    assert given == [4, None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lambda_": -1.0}, "lambda_ must be >= 0"),
        ({"lambda_": float("inf")}, "lambda_ must be >= 0"),
        (
            {"prox_metric": "fista"},
            r"unknown prox_metric 'fista'; allowed: \['adaptive', 'euclidean', 'uncorrected'\]",
        ),
        ({"group_by": "kernel"}, "unknown group_by 'kernel'"),
        ({"penalty": "l0"}, r"unknown penalty 'l0'; choose one of \['group_lasso', 'l1'"),
        ({"start_epoch": -1}, "prox_start_epoch must be >= 0"),
        ({"layer_lambdas": {"conv1": -0.1}}, "layer_lambdas must be >= 0"),
    ],
)
def test_group_sparsity_is_validated_once(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupSparsity(**kwargs)


def test_group_sparsity_lambdas_per_layer():
    settings = GroupSparsity(lambda_=0.1, layer_lambdas={"b": 0.5})
    assert settings.lambdas(["a", "b"]) == {"a": 0.1, "b": 0.5}
    with pytest.raises(ValueError, match=r"layer_lambdas names unknown convs \['b'\]"):
        settings.check_layers(["a"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lambda_ = 1.0


def test_dead_groups_warning_only_when_every_group_is_zero():
    live = {"a": torch.zeros(2, 3, 1, 1), "b": torch.ones(1, 2, 3, 3)}
    assert dead_groups_warning(live, "in_channel", "epoch 1") is None
    dead = {"a": torch.zeros(2, 3, 1, 1), "b": torch.zeros(1, 2, 3, 3)}
    message = dead_groups_warning(dead, "in_channel", "step 7", 0.12345, advice="do X")
    assert message is not None
    assert message.startswith("every channel group of the grouped convs is zero at step 7")
    assert "(λ=0.123)" in message and message.endswith("do X.")
    assert "(λ=?)" in dead_groups_warning(dead, "out_channel", "epoch 0")
