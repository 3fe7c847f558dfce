"""The fused AdamW + prox kernels of `ProxAdamW` — the compiled C++ one and the Triton one — against
the eager path they replace, and their fallback: the same weights (float rounding), the same
zero groups, torch AdamW's state, one warning when they cannot run, an error when one is forced.

The Triton kernel runs on CPU tensors in Triton's interpreter (`TRITON_INTERPRET=1`), and on
CUDA tensors in the tests marked `gpu` (skipped without CUDA). The first test to need the
compiled kernel builds it (once per machine, then it is cached)."""

from __future__ import annotations

import copy
import fnmatch
import os
import shutil
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lightning_mtl.sparsity import ProxAdamW, live_groups
from lightning_mtl.sparsity import kernels as kernel_package
from lightning_mtl.sparsity.kernels import (
    KernelFallbackWarning,
    KernelUnavailable,
    adamw_prox,
    triton_adamw_prox,
    triton_program,
)
from lightning_mtl.sparsity.operators import register_prox_operator
from tests import helpers

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
#: Triton's interpreter runs one program at a time in Python: the same shape classes with a
#: smaller ≥ 64-channel layer (still several row chunks per tile), and a shorter λ ladder
INTERPRETED_SHAPES = [*SHAPES[:-1], (32, 64, 1, 1)]
INTERPRETED_LAMBDAS = [1e-3, 0.3, 30.0, 1e4]
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


#: the fused kernels under test: (kernel, device); the Triton one on CPU runs interpreted
FUSED = [
    pytest.param(("compiled", "cpu"), id="compiled"),
    pytest.param(("triton", "cpu"), id="triton-interpreted"),
    pytest.param(
        ("triton", "cuda"),
        id="triton-cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


@pytest.fixture
def interpreted(monkeypatch):
    """Triton kernels run on CPU tensors in Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(params=FUSED)
def fused(request, monkeypatch):
    """(kernel, device) of a fused kernel that can run here: the compiled one (built if
    needed), the Triton one interpreted on CPU, or compiled by Triton on CUDA."""
    kernel, device = request.param
    if kernel == "compiled":
        request.getfixturevalue("compiled")
    elif device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return kernel, device


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


def _pair(
    shape,
    dtype,
    group_by,
    kernel="compiled",
    device="cpu",
    memory_format=torch.contiguous_format,
    **options,
):
    """Two identical (conv weight, bias) sets on `device` under an eager and a `kernel`
    ProxAdamW."""
    generator = torch.Generator().manual_seed(zlib.crc32(repr((shape, group_by)).encode()))
    weight = _weight(shape, group_by, generator, dtype)
    weight = weight.to(device=device, memory_format=memory_format)
    bias = torch.randn(shape[0], generator=generator, dtype=dtype).to(device)
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
                p.grad = g.to(device=p.device, memory_format=_layout(p))
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


def _layout(p: Tensor) -> torch.memory_format:
    """The memory format a gradient of `p` takes (channels_last for such a conv weight)."""
    if p.dim() == 4 and not p.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@pytest.mark.parametrize("group_by", ["in_channel", "out_channel"])
@pytest.mark.parametrize(("penalty", "metric"), PROXES)
def test_kernel_matches_eager(fused, penalty, metric, group_by):
    """Every shape class, amsgrad and weight decay, λ from no zero group to all, three steps,
    float32 (float64 for one shape)."""
    kernel, device = fused
    interpreted = kernel == "triton" and device == "cpu"
    shapes = INTERPRETED_SHAPES if interpreted else SHAPES
    dead = set()
    for shape in shapes:
        for dtype in (torch.float32, torch.float64) if shape == SHAPES[1] else (torch.float32,):
            for amsgrad, weight_decay in VARIANTS:
                for lam in INTERPRETED_LAMBDAS if interpreted else LAMBDAS:
                    case = f"{shape} {dtype} amsgrad={amsgrad} wd={weight_decay} λ={lam}"
                    options = dict(lambda_=lam, penalty=penalty, prox_metric=metric)
                    runs, generator = _pair(
                        shape,
                        dtype,
                        group_by,
                        kernel,
                        device,
                        amsgrad=amsgrad,
                        weight_decay=weight_decay,
                        **options,
                    )
                    share = _check_steps(runs, generator, group_by, case)
                    dead.add(0.5 if 0 < share < 1 else share)
    assert dead == {0.0, 0.5, 1.0}, "the λ ladder spans no, some and every zero group"


def test_kernel_keeps_nan_visible(fused):
    kernel, device = fused
    runs, _ = _pair((4, 3, 1, 1), torch.float32, "in_channel", kernel, device, lambda_=0.1)
    for params, opt in runs:
        params[0].grad = torch.ones(4, 3, 1, 1, device=device)
        params[0].grad[0, 1] = float("nan")
        params[1].grad = torch.ones(4, device=device)
        opt.step()
        assert params[0][:, 1].isnan().all() and not params[0][:, [0, 2]].isnan().any()


def test_state_is_torch_adamw_state_and_resumes_across_paths(fused, tmp_path):
    """A checkpoint of one path resumes on the other: the same state keys, dtypes and shapes
    as torch AdamW, and the continued run equals the uninterrupted one."""
    kernel, device = fused
    runs, generator = _pair(
        (16, 8, 3, 3), torch.float32, "in_channel", kernel, device, lambda_=3.0, amsgrad=True
    )
    steps = _steps(runs, generator, steps=4)
    next(steps), next(steps)
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2, 1, 1))], amsgrad=True)
    reference.param_groups[0]["params"][0].grad = torch.ones(2, 2, 1, 1)
    reference.step()
    expected = {k: (v.dtype, v.dim()) for k, v in reference.state_dict()["state"][0].items()}
    for _, opt in runs:
        state = opt.state_dict()["state"][0]
        assert {k: (v.dtype, v.dim()) for k, v in state.items()} == expected
    (eager, opt_e), (fused_params, opt_f) = runs
    torch.save(opt_f.state_dict(), tmp_path / "fused.pt")
    torch.save(opt_e.state_dict(), tmp_path / "eager.pt")
    opt_e.load_state_dict(torch.load(tmp_path / "fused.pt", weights_only=True))
    opt_f.load_state_dict(torch.load(tmp_path / "eager.pt", weights_only=True))
    for a, b in zip(eager, fused_params, strict=True):  # swap the weights: each resumes the other
        a.data, b.data = b.data.clone(), a.data.clone()
    next(steps), next(steps)
    _assert_same(runs, "in_channel", "resumed across paths")
    assert opt_f.kernel == kernel and opt_e.kernel == "eager"


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
        ValueError,
        match=r"unknown kernel 'cuda'; allowed: \['auto', 'compiled', 'triton', 'eager'\]",
    ):
        ProxAdamW([torch.nn.Parameter(torch.zeros(2, 2, 1, 1))], kernel="cuda")


def test_weights_the_kernel_does_not_take_run_eagerly(compiled, fresh_warnings, registries):
    """Channels-last weights and a penalty registered by a user: eager, warned once each;
    `kernel="compiled"` refuses them."""

    @register_prox_operator("scaled_l1")
    def scaled_l1(z, d, step_size, group_by, group_size=None):
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


@pytest.mark.parametrize("kernel", ["eager", "compiled", "triton"])
@pytest.mark.parametrize("metric", ["adaptive", "euclidean", "uncorrected"])
def test_group_sizes_weigh_groups_as_the_original_layer(compiled, interpreted, kernel, metric):
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


# -- the Triton kernel ---------------------------------------------------------------------------

#: the Triton kernel where it can run here: interpreted on CPU, compiled on CUDA
TRITON = [p for p in FUSED if p.values[0][0] == "triton"]


@pytest.mark.parametrize("fused", TRITON, indirect=True)
@pytest.mark.parametrize("group_by", ["in_channel", "out_channel"])
def test_triton_kernel_takes_channels_last_weights(fused, group_by):
    """channels_last weights (what a channels_last model trains) take the kernel, not the
    eager path, and match it: every metric and penalty, a λ that kills some groups."""
    kernel, device = fused
    for penalty, metric in PROXES:
        for shape in [(16, 8, 3, 3), (8, 16, 1, 1)]:
            case = f"{shape} channels_last {penalty} {metric}"
            runs, generator = _pair(
                shape,
                torch.float32,
                group_by,
                kernel,
                device,
                memory_format=torch.channels_last,
                lambda_=3.0,
                penalty=penalty,
                prox_metric=metric,
            )
            assert runs[1][0][0].is_contiguous(memory_format=torch.channels_last)
            with warnings.catch_warnings():
                warnings.simplefilter("error", KernelFallbackWarning)
                _check_steps(runs, generator, group_by, case, steps=2)


@pytest.mark.parametrize("fused", TRITON, indirect=True)
def test_triton_kernel_maximizes_and_takes_both_lerp_formulas(fused):
    """maximize=True, and β₁ = 0.3 (1 − β₁ ≥ 0.5: torch's other lerp formula)."""
    kernel, device = fused
    for betas in [(0.9, 0.999), (0.3, 0.99)]:
        for penalty, metric in PROXES:
            case = f"maximize betas={betas} {penalty} {metric}"
            runs, generator = _pair(
                (16, 8, 3, 3),
                torch.float32,
                "in_channel",
                kernel,
                device,
                lambda_=3.0,
                betas=betas,
                penalty=penalty,
                prox_metric=metric,
            )
            for _, opt in runs:  # torch AdamW's per-group option (ProxAdamW's default: False)
                for group in opt.param_groups:
                    group["maximize"] = True
            _check_steps(runs, generator, "in_channel", case, steps=2)


@pytest.mark.parametrize("fused", TRITON, indirect=True)
def test_one_triton_launch_per_tile_shape_serves_many_convs(fused, monkeypatch):
    """A param group of convs of every shape class (and a bias) steps as the eager path does,
    in one launch per tile shape (kernel size, once layers are wide enough) — not per conv."""
    kernel, device = fused
    shapes = [(16, 3, 7, 7), (16, 64, 1, 1), (32, 64, 1, 1), (16, 16, 3, 3), (32, 8, 3, 3)]
    generator = torch.Generator().manual_seed(0)
    weights = [_weight(s, "in_channel", generator, torch.float32).to(device) for s in shapes]
    runs = []
    for mode in ("eager", kernel):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        params.append(torch.nn.Parameter(torch.zeros(8, device=device)))
        runs.append((params, ProxAdamW(params, lr=1e-2, lambda_=3.0, kernel=mode)))
    program = triton_program.adamw_prox_program
    launches = []

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return program[grid]

    monkeypatch.setattr(triton_program, "adamw_prox_program", Counting())
    for step, _ in enumerate(_steps(runs, generator, steps=2)):
        for a, b in zip(*(params for params, _ in runs), strict=True):
            torch.testing.assert_close(b, a, msg=lambda m, step=step: f"step {step + 1}: {m}")
    assert len(launches) == 2 * 3  # two steps of three launches: 1×1, 3×3 and 7×7 convs


@pytest.mark.parametrize("fused", TRITON, indirect=True)
def test_triton_newton_loop_converges_where_metric_spans_decades(fused, monkeypatch):
    """Groups whose Adam metric spans six decades need several Newton steps: the kernel's
    on-device loop (at most `MAX_NEWTON_STEPS`, each tile stopping once its groups moved less
    than √eps·θ) lands on the float64 root to float32 precision, as the eager path (until
    converged) does — where two steps would not."""
    kernel, device = fused
    generator = torch.Generator().manual_seed(0)
    shape = (64, 4, 1, 1)
    weight = torch.randn(shape, generator=generator) * torch.logspace(-1, 1, 4).view(1, 4, 1, 1)
    spread = torch.logspace(-3, 3, 64).view(64, 1, 1, 1)  # gradients over six decades
    grad = torch.randn(shape, generator=generator) * spread

    def step(mode: str, dtype: torch.dtype) -> Tensor:
        p = torch.nn.Parameter(weight.to(device=device, dtype=dtype))
        opt = ProxAdamW([p], lr=0.5, lambda_=300.0, kernel=mode)
        p.grad = grad.to(device=device, dtype=dtype)
        opt.step()
        return p.detach().cpu()

    exact = step("eager", torch.float64)
    assert int((~live_groups(exact, "in_channel")).sum()) == 2, "two of four groups are zero"
    torch.testing.assert_close(step(kernel, torch.float32), exact.float(), rtol=2e-6, atol=1e-7)
    full = triton_adamw_prox.adamw_prox_
    monkeypatch.setattr(
        triton_adamw_prox, "adamw_prox_", lambda *a, **k: full(*a, **{**k, "max_newton_steps": 2})
    )
    two_steps = step(kernel, torch.float32)
    assert not torch.allclose(two_steps, exact.float(), rtol=2e-6, atol=1e-7)


def test_triton_kernel_needs_cuda_or_the_interpreter(monkeypatch, fresh_warnings):
    """On CPU tensors without TRITON_INTERPRET: `kernel="triton"` raises, naming both ways;
    `kernel="auto"` keeps the compiled CPU kernel (or the eager path) and never tries Triton."""
    monkeypatch.delenv("TRITON_INTERPRET")
    param = torch.nn.Parameter(torch.randn(4, 2, 3, 3))
    param.grad = torch.ones_like(param)
    with pytest.raises(KernelUnavailable, match=r"CUDA tensors .*TRITON_INTERPRET=1"):
        ProxAdamW([param], lambda_=0.1, kernel="triton").step()
    assert kernel_package.for_device("auto", param.device) is adamw_prox
    assert kernel_package.for_device("auto", torch.device("cuda")) is triton_adamw_prox


def test_triton_kernel_refuses_half_precision_weights(interpreted):
    param = torch.nn.Parameter(torch.randn(4, 2, 3, 3, dtype=torch.bfloat16))
    param.grad = torch.ones_like(param)
    with pytest.raises(KernelUnavailable, match=r"float32 and float64 weights, not torch.bfloat16"):
        ProxAdamW([param], lambda_=0.1, kernel="triton").step()


def test_triton_interpreter_set_after_import_is_named(tmp_path):
    """TRITON_INTERPRET set only after lightning imported triton cannot take effect: the error
    says to set it before (a fresh process, since this one has the interpreter on)."""
    script = (
        "import os, torch, lightning\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from lightning_mtl.sparsity import ProxAdamW\n"
        "p = torch.nn.Parameter(torch.randn(4, 2, 3, 3)); p.grad = torch.ones_like(p)\n"
        "ProxAdamW([p], lambda_=0.1, kernel='triton').step()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode != 0
    assert "TRITON_INTERPRET=1 was set after triton was imported" in done.stderr


@pytest.mark.parametrize("fused", TRITON, indirect=True)
def test_triton_step_reads_nothing_back_to_the_host(fused):
    """No tensor value is read on the host in a step (each read synchronises a GPU): the whole
    optimizer, the sparse conv through the kernel and the bias through torch's AdamW."""
    kernel, device = fused
    runs, generator = _pair(
        (16, 8, 3, 3), torch.float32, "in_channel", kernel, device, lambda_=3.0, amsgrad=True
    )
    steps = _steps([runs[1]], generator, steps=3)
    next(steps)  # the state exists
    with helpers.count_scalar_reads() as reads:
        next(steps), next(steps)
    assert reads.origins == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", ["triton", "auto"])
def test_triton_step_does_not_synchronize_cuda(kernel):
    """`torch.cuda.set_sync_debug_mode("error")` turns any synchronising call of a
    `ProxAdamW.step()` on CUDA into an error (after the first step, which builds the state and
    compiles the kernel)."""
    params = [
        torch.nn.Parameter(torch.randn(64, 32, 3, 3, device="cuda")),
        torch.nn.Parameter(torch.randn(64, 64, 1, 1, device="cuda")),
        torch.nn.Parameter(torch.zeros(64, device="cuda")),
    ]
    opt = ProxAdamW(params, lr=1e-2, lambda_=3.0, kernel=kernel)
    for p in params:
        p.grad = torch.randn_like(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(bool(p.isfinite().all()) for p in params)


@pytest.mark.slow
def test_triton_program_compiles_for_hopper(tmp_path):
    """Triton compiles every variant of the program to a cubin for sm_90 (H100/H200; no GPU
    needed: Triton ships its ptxas) — what the interpreter cannot show: that the program is
    valid compiled Triton, not only valid Python."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # really compile, not a cached result
    done = subprocess.run(
        [sys.executable, str(helpers.WORKERS / "compile_triton.py"), "90"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sm_90 ") == 31
