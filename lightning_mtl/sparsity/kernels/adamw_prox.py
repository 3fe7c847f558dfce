"""The compiled CPU kernel of `ProxAdamW`: the AdamW update and the prox of a layer in one pass.

`adamw_prox.cpp` is built with `torch.utils.cpp_extension` (g++ and ninja) the first time it is
needed, into a folder keyed by its source, flags and the torch version (under
`$LIGHTNING_MTL_KERNEL_DIR`, default `~/.cache/lightning-mtl/kernels`), so later processes only
load it. `load()` raises `KernelUnavailable` when it cannot be built; `unsupported()` says why a
parameter cannot take it. `ProxAdamW` decides from those what runs where, and warns
(`warn_fallback`) when it falls back to the eager path.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_mtl.sparsity.operators.group_lasso import group_lasso
from lightning_mtl.sparsity.operators.l1 import l1

__all__ = [
    "KernelFallbackWarning",
    "KernelUnavailable",
    "adamw_prox_",
    "load",
    "penalty_unsupported",
    "unsupported",
    "warn_fallback",
]

SOURCE = Path(__file__).with_name("adamw_prox.cpp")
#: -O3 without -march: the library runs on any x86-64 and picks its AVX-512 / AVX2 / baseline
#: clone at load time; no fast-math and no FMA contraction, so the operations round as eager's
CFLAGS = ("-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off")
LDFLAGS = ("-fopenmp",)
#: the penalties the kernel implements, by name, with the operator each must still be bound to
#: (the kernel takes penalty, metric and grouping by name and maps them to its own codes)
PENALTIES = {"group_lasso": group_lasso, "l1": l1}
DTYPES = (torch.float32, torch.float64)


class KernelUnavailable(RuntimeError):
    """The compiled kernel cannot be built or loaded in this environment."""


class KernelFallbackWarning(UserWarning):
    """`ProxAdamW(kernel="auto")` runs some parameters on the eager path."""


_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "op": the kernel, or "error": why it is unavailable
_warned: set[str] = set()


def cache_dir() -> Path:
    """Where builds go: `$LIGHTNING_MTL_KERNEL_DIR`, else under `$XDG_CACHE_HOME` (`~/.cache`)."""
    if os.environ.get("LIGHTNING_MTL_KERNEL_DIR"):
        return Path(os.environ["LIGHTNING_MTL_KERNEL_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lightning-mtl" / "kernels"


def build_key() -> str:
    """A hash of what the library depends on: the source, the flags and the torch version."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(repr((CFLAGS, LDFLAGS, torch.__version__)).encode())
    return digest.hexdigest()[:16]


def load() -> Callable[..., None]:
    """The kernel op, built on first use and cached; `KernelUnavailable` says why not."""
    with _lock:
        if "op" not in _loaded and "error" not in _loaded:
            try:
                _loaded["op"] = _build()
            except Exception as error:  # any failure to build or load means: not available
                _loaded["error"] = error
        if "error" in _loaded:
            error = _loaded["error"]
            raise KernelUnavailable(
                f"the compiled kernel could not be built ({_summary(error)})"
            ) from error
        return _loaded["op"]  # type: ignore[return-value]


def _build() -> Callable[..., None]:
    """Load the cached library, or build it first (torch's extension builder locks the folder,
    so concurrent first uses build once)."""
    key = build_key()
    name = f"lightning_mtl_adamw_prox_{key}"
    directory = cache_dir() / f"torch-{torch.__version__}-{key}"
    built = directory / "built"  # written once the library is complete
    if built.exists():
        torch.ops.load_library(str(directory / f"{name}.so"))
    else:
        from torch.utils import cpp_extension  # slow to import: only to build

        directory.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(directory),
            is_python_module=False,
        )
        built.touch()
    return torch.ops.lightning_mtl.adamw_prox_


def _summary(error: BaseException) -> str:
    """The gist of a build error: its first line's head and the compiler's (or shell's)
    complaint, without the build log in between (the full error is the `__cause__`)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(error).__name__
    complaint = next(
        (
            line
            for line in lines[1:]
            if re.search(r"error|not found", line, re.IGNORECASE)
            and not line.startswith(("FAILED", "ninja"))
        ),
        lines[-1],
    )
    return f"{lines[0].split(': ')[0]}: {complaint}"


def penalty_unsupported(name: str, operator: object) -> str | None:
    """Why the kernel cannot apply `penalty=name` (bound to `operator`), or None."""
    if PENALTIES.get(name) is not operator:
        return f"penalty {name!r} is a registered prox operator the compiled kernel does not have"
    return None


def unsupported(param: Tensor, *tensors: Tensor) -> str | None:
    """Why the kernel cannot update `param` with its gradient and state `tensors` (or cannot
    be built here), or None."""
    reason = _tensors_unsupported(param, *tensors)
    if reason is None:
        try:
            load()
        except KernelUnavailable as error:
            reason = str(error)
    return reason


def _tensors_unsupported(param: Tensor, *tensors: Tensor) -> str | None:
    if param.device.type != "cpu":
        return f"the compiled kernel runs on CPU tensors, not {param.device.type}"
    if param.dtype not in DTYPES:
        return f"the compiled kernel takes float32 and float64 weights, not {param.dtype}"
    if not all(
        t.is_contiguous() and t.dtype == param.dtype and t.shape == param.shape
        for t in (param, *tensors)
    ):
        return (
            "the compiled kernel needs contiguous weights, gradients and state of one dtype "
            "(not channels_last or other strides)"
        )
    return None


def adamw_prox_(
    tensors: Sequence[Sequence[Tensor]],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
    maximize: bool,
    penalty: str,
    metric: str,
    group_by: str,
    lambda_: float,
    max_newton_steps: int,
    group_sizes: Sequence[int] = (),
) -> None:
    """AdamW then the prox, in place, for every weight of `tensors` = (params, grads, exp_avgs,
    exp_avg_sqs, max_exp_avg_sqs (empty without amsgrad), steps); `steps` are incremented.
    `group_sizes` (one per param, or none) sets the p_g of the group lasso's weight √p_g."""
    load()(
        *tensors,
        lr,
        betas[0],
        betas[1],
        weight_decay,
        eps,
        maximize,
        penalty,
        metric,
        group_by,
        lambda_,
        max_newton_steps,
        list(group_sizes),
    )


def warn_fallback(reason: str) -> None:
    """Warn once per process and reason, on the rank-zero process only."""
    if reason in _warned or _rank() != 0:
        return
    _warned.add(reason)
    warnings.warn(
        f"ProxAdamW: {reason}, so those parameters take the eager path (torch AdamW, then the "
        "prox in PyTorch ops: the same results, slower). kernel='eager' picks that path "
        "without this warning.",
        KernelFallbackWarning,
        stacklevel=4,
    )


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
