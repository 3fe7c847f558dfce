"""The compiled AdamW + prox kernel of `ProxAdamW` against the eager path it replaces, and its
fallback: the same weights (float rounding), the same zero groups, torch AdamW's state, one
warning when it cannot run, an error under `kernel="compiled"`.

The first test to need the kernel builds it (once per machine, then it is cached)."""

from __future__ import annotations

import copy
import fnmatch
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lightning_mtl.sparsity import ProxAdamW, live_groups
from lightning_mtl.sparsity import kernels as kernel_package
from lightning_mtl.sparsity.kernels import KernelFallbackWarning, KernelUnavailable, adamw_prox
from lightning_mtl.sparsity.operators import register_prox_operator

ROOT = Path(__file__).resolve().parents[1]
PROXES = [
    ("group_lasso", "adaptive"),
    ("group_lasso", "euclidean"),
    ("group_lasso", "uncorrected"),
    ("l1", "adaptive"),
    ("l1", "euclidean"),
]
#: 1×1 with 3 → 8 channels, 3×3, 7×7, one input channel, 64 → 256 channels
SHAPES = [(8, 3, 1, 1), (16, 8, 3, 3), (8, 4, 7, 7), (6, 1, 3, 3), (256, 64, 1, 1)]
#: with lr 1e-2 and group scales over two decades: no zero group, some, every one
LAMBDAS = [1e-3, 0.3, 3.0, 30.0, 1e4]
#: (amsgrad, weight_decay)
VARIANTS = [(False, 0.0), (True, 0.05)]


@pytest.fixture(scope="module")
def compiled():
    """The kernel, built if needed; a machine without a C++ compiler or ninja skips."""
    try:
        return kernel_package.load()
    except KernelUnavailable:
        if shutil.which("ninja") and shutil.which(os.environ.get("CXX", "c++")):
            raise  # the toolchain is there, so the kernel must build
        pytest.skip("the compiled kernel needs a C++ compiler and ninja")


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Fallback warnings are once per process: forget the ones already given."""
    monkeypatch.setattr(adamw_prox, "_warned", set())


@pytest.fixture
def broken_build(monkeypatch, tmp_path, fresh_warnings):
    """A real build failure: an empty build cache and a compiler that does not exist."""
    monkeypatch.setattr(adamw_prox, "_loaded", {})
    monkeypatch.setenv("LIGHTNING_MTL_KERNEL_DIR", str(tmp_path / "kernels"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))


def _weight(shape, group_by: str, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Random groups whose norms span two decades, so a λ ladder kills them one by one."""
    dim = 1 if group_by == "in_channel" else 0
    scale = torch.logspace(-2, 0, shape[dim], dtype=dtype).view(
        [-1 if i == dim else 1 for i in range(4)]
    )
    return torch.randn(shape, generator=generator, dtype=dtype) * scale


def _pair(shape, dtype, group_by, kernel="compiled", **options):
    """Two identical (conv weight, bias) sets under an eager and a `kernel` ProxAdamW."""
    generator = torch.Generator().manual_seed(hash((shape, group_by)) % 2**31)
    weight = _weight(shape, group_by, generator, dtype)
    bias = torch.randn(shape[0], generator=generator, dtype=dtype)
    runs = []
    for mode in ("eager", kernel):
        params = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
        opt = ProxAdamW(params, lr=1e-2, group_by=group_by, kernel=mode, **options)
        runs.append((params, opt))
    return runs, generator


def _steps(runs, generator, steps: int = 3):
    """Step both with the same gradients (magnitudes over decades: Adam's metric varies)."""
    for _ in range(steps):
        grads = [
            torch.randn(p.shape, generator=generator, dtype=p.dtype)
            * torch.exp(torch.randn(p.shape, generator=generator, dtype=p.dtype))
            for p in runs[0][0]
        ]
        for params, opt in runs:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
        yield


def _assert_same(runs, group_by: str, case: str) -> float:
    """Weights and state equal up to float rounding, zero groups identical; the zero share."""
    (eager, opt_e), (fused, opt_f) = runs
    for a, b in zip(eager, fused, strict=True):
        torch.testing.assert_close(b, a, msg=lambda m: f"{case}: {m}")
        state_a, state_b = opt_e.state[a], opt_f.state[b]
        assert state_a.keys() == state_b.keys(), case
        for key in state_a:
            assert state_b[key].dtype == state_a[key].dtype, (case, key)
            torch.testing.assert_close(
                state_b[key], state_a[key], msg=lambda m, key=key: f"{case} {key}: {m}"
            )
    dead_eager, dead_fused = ~live_groups(eager[0], group_by), ~live_groups(fused[0], group_by)
    assert torch.equal(dead_fused, dead_eager), f"{case}: zero groups differ"
    return float(dead_eager.float().mean())


def _check_steps(runs, generator, group_by: str, case: str, steps: int = 3) -> float:
    """`steps` steps, both paths compared after each; the last zero share."""
    share = 0.0
    for step, _ in enumerate(_steps(runs, generator, steps)):
        share = _assert_same(runs, group_by, f"{case}, step {step + 1}")
    return share


@pytest.mark.parametrize("group_by", ["in_channel", "out_channel"])
@pytest.mark.parametrize(("penalty", "metric"), PROXES)
def test_kernel_matches_eager(compiled, penalty, metric, group_by):
    """Every shape class, amsgrad and weight decay, λ from no zero group to all, three steps,
    float32 (float64 for one shape)."""
    dead = set()
    for shape in SHAPES:
        for dtype in (torch.float32, torch.float64) if shape == SHAPES[1] else (torch.float32,):
            for amsgrad, weight_decay in VARIANTS:
                for lam in LAMBDAS:
                    case = f"{shape} {dtype} amsgrad={amsgrad} wd={weight_decay} λ={lam}"
                    options = dict(lambda_=lam, penalty=penalty, prox_metric=metric)
                    runs, generator = _pair(
                        shape,
                        dtype,
                        group_by,
                        amsgrad=amsgrad,
                        weight_decay=weight_decay,
                        **options,
                    )
                    share = _check_steps(runs, generator, group_by, case)
                    dead.add(0.5 if 0 < share < 1 else share)
    assert dead == {0.0, 0.5, 1.0}, "the λ ladder spans no, some and every zero group"


def test_kernel_keeps_nan_visible(compiled):
    runs, _ = _pair((4, 3, 1, 1), torch.float32, "in_channel", lambda_=0.1)
    for params, opt in runs:
        params[0].grad = torch.ones(4, 3, 1, 1)
        params[0].grad[0, 1] = float("nan")
        params[1].grad = torch.ones(4)
        opt.step()
        assert params[0][:, 1].isnan().all() and not params[0][:, [0, 2]].isnan().any()


def test_state_is_torch_adamw_state_and_resumes_across_paths(compiled, tmp_path):
    """A checkpoint of one path resumes on the other: the same state keys, dtypes and shapes
    as torch AdamW, and the continued run equals the uninterrupted one."""
    runs, generator = _pair((16, 8, 3, 3), torch.float32, "in_channel", lambda_=3.0, amsgrad=True)
    steps = _steps(runs, generator, steps=4)
    next(steps), next(steps)
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2, 1, 1))], amsgrad=True)
    reference.param_groups[0]["params"][0].grad = torch.ones(2, 2, 1, 1)
    reference.step()
    expected = {k: (v.dtype, v.dim()) for k, v in reference.state_dict()["state"][0].items()}
    for _, opt in runs:
        state = opt.state_dict()["state"][0]
        assert {k: (v.dtype, v.dim()) for k, v in state.items()} == expected
    (eager, opt_e), (fused, opt_f) = runs
    torch.save(opt_f.state_dict(), tmp_path / "fused.pt")
    torch.save(opt_e.state_dict(), tmp_path / "eager.pt")
    opt_e.load_state_dict(torch.load(tmp_path / "fused.pt", weights_only=True))
    opt_f.load_state_dict(torch.load(tmp_path / "eager.pt", weights_only=True))
    for a, b in zip(eager, fused, strict=True):  # swap the weights too: each resumes the other
        a.data, b.data = b.data.clone(), a.data.clone()
    next(steps), next(steps)
    _assert_same(runs, "in_channel", "resumed across paths")
    assert opt_f.kernel == "compiled" and opt_e.kernel == "eager"


def test_lambda_zero_groups_take_torch_fused_adamw(compiled):
    params = [torch.nn.Parameter(torch.randn(8, 4, 3, 3)), torch.nn.Parameter(torch.randn(8))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = ProxAdamW(params, lr=1e-2, weight_decay=0.1, kernel="compiled")
    adamw = torch.optim.AdamW(ref, lr=1e-2, eps=1e-6, weight_decay=0.1, fused=True)
    for _ in range(3):
        for p, q in zip(params, ref, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        opt.step()
        adamw.step()
    assert all(torch.equal(p, q) for p, q in zip(params, ref, strict=True))


def test_build_failure_falls_back_with_one_warning(broken_build):
    runs, generator = _pair((8, 4, 3, 3), torch.float32, "in_channel", kernel="auto", lambda_=3.0)
    with pytest.warns(KernelFallbackWarning, match="could not be built") as caught:
        _check_steps(runs, generator, "in_channel", "fallback")
    assert len([w for w in caught if w.category is KernelFallbackWarning]) == 1
    with warnings.catch_warnings():  # once per process: a second optimizer stays quiet
        warnings.simplefilter("error", KernelFallbackWarning)
        runs, generator = _pair(
            (8, 4, 1, 1), torch.float32, "in_channel", kernel="auto", lambda_=3.0
        )
        _check_steps(runs, generator, "in_channel", "quiet", steps=1)


def test_compiled_raises_when_the_kernel_cannot_be_built(broken_build):
    with pytest.raises(KernelUnavailable, match=r"could not be built \(.*\)") as error:
        ProxAdamW([torch.nn.Parameter(torch.zeros(2, 2, 1, 1))], kernel="compiled")
    assert error.value.__cause__ is not None  # the build error itself is kept
    with pytest.raises(
        ValueError, match=r"unknown kernel 'triton'; allowed: \['auto', 'compiled', 'eager'\]"
    ):
        ProxAdamW([torch.nn.Parameter(torch.zeros(2, 2, 1, 1))], kernel="triton")


def test_weights_the_kernel_does_not_take_run_eagerly(compiled, fresh_warnings, registries):
    """Channels-last weights and a penalty registered by a user: eager, warned once each;
    `kernel="compiled"` refuses them."""

    @register_prox_operator("scaled_l1")
    def scaled_l1(z, d, step_size, group_by):
        return z.sign() * (z.abs() - 2 * step_size).clamp_min(0)

    cases = [
        ({"lambda_": 3.0}, "contiguous", lambda w: w.to(memory_format=torch.channels_last)),
        ({"lambda_": 3.0, "penalty": "scaled_l1"}, "'scaled_l1'", lambda w: w),
    ]
    for options, message, layout in cases:
        runs, generator = _pair((8, 4, 3, 3), torch.float32, "in_channel", kernel="auto", **options)
        for params, _ in runs:
            params[0].data = layout(params[0].data)
        with pytest.warns(KernelFallbackWarning, match=message):
            _check_steps(runs, generator, "in_channel", message)
        params = [torch.nn.Parameter(layout(torch.randn(8, 4, 3, 3)))]
        params[0].grad = torch.ones_like(params[0])
        with pytest.raises(KernelUnavailable, match=message):
            ProxAdamW(params, kernel="compiled", **options).step()


def test_fallback_warns_on_rank_zero_only(broken_build, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        runs, generator = _pair(
            (8, 4, 3, 3), torch.float32, "in_channel", kernel="auto", lambda_=3.0
        )
        _check_steps(runs, generator, "in_channel", "quiet", steps=1)


def test_kernel_choice_survives_copies():
    opt = ProxAdamW([torch.nn.Parameter(torch.zeros(2, 2, 1, 1))], kernel="eager")
    assert copy.deepcopy(opt).kernel == "eager"


def test_the_kernel_source_ships_with_the_package():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["lightning_mtl.sparsity.kernels"]
    assert any(fnmatch.fnmatch(adamw_prox.SOURCE.name, pattern) for pattern in data)
    assert adamw_prox.SOURCE.exists()


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
@pytest.mark.parametrize("metric", ["adaptive", "euclidean", "uncorrected"])
def test_group_sizes_weigh_groups_as_the_original_layer(compiled, kernel, metric):
    """A conv narrowed from 16 to 8 output rows with `group_sizes=[16·9]` steps exactly as the
    16-row conv whose other rows are zero, with zero gradients and state (what train-time
    compaction removed), does on its kept rows — over a λ ladder that kills some groups."""
    partly_dead = False
    for lam in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        generator = torch.Generator().manual_seed(0)
        scales = torch.logspace(-2, 0, 4).view(1, 4, 1, 1)  # group norms over two decades
        narrow = torch.randn(8, 4, 3, 3, generator=generator) * scales
        wide = torch.cat([narrow, torch.zeros(8, 4, 3, 3)])
        a, b = torch.nn.Parameter(narrow.clone()), torch.nn.Parameter(wide.clone())
        options = dict(lr=1e-3, lambda_=lam, prox_metric=metric, kernel=kernel)
        opt_a = ProxAdamW([{"params": [a], "group_sizes": [16 * 9]}], **options)
        opt_b = ProxAdamW([b], **options)
        for _ in range(3):
            grad = torch.randn(8, 4, 3, 3, generator=generator) * 0.1
            a.grad, b.grad = grad.clone(), torch.cat([grad, torch.zeros(8, 4, 3, 3)])
            opt_a.step()
            opt_b.step()
            torch.testing.assert_close(a, b[:8], rtol=1e-6, atol=1e-7)
            assert torch.equal(b[8:], torch.zeros(8, 4, 3, 3))
        partly_dead |= 0 < int((~live_groups(a, "in_channel")).sum()) < 4
    assert partly_dead, "some λ of the ladder kills some groups, not all"
    with pytest.raises(ValueError, match="group_sizes must give a positive size for each"):
        ProxAdamW([{"params": [a], "group_sizes": [1, 2]}])


def test_the_kernels_adam_update_is_torch_fused_adamw_bit_for_bit(compiled):
    """With a prox too weak to change anything (λ 1e-30), the compiled kernel's weights and state
    equal torch `AdamW(fused=True)`'s bit for bit, weight decay included."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, 3, 3, generator=generator)
    a, b = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(weight.clone())
    options = dict(lr=1e-2, eps=1e-6, weight_decay=0.05)
    reference = torch.optim.AdamW([a], **options, fused=True)
    opt = ProxAdamW([b], **options, lambda_=1e-30, prox_metric="euclidean", kernel="compiled")
    for _ in range(5):
        grad = torch.randn(weight.shape, generator=generator)
        a.grad, b.grad = grad.clone(), grad.clone()
        reference.step()
        opt.step()
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(reference.state[a][key], opt.state[b][key]), key
