"""The fused kernels of the sparsity optimizer, AdamW update and prox in one pass:
`adamw_prox` (C++, CPU; built on first use) and `triton_adamw_prox` (Triton: CUDA, or CPU
tensors in Triton's interpreter). Both expose `unsupported(param, *state)` and `adamw_prox_`."""

from __future__ import annotations

from types import ModuleType

import torch

from lightning_mtl.sparsity.kernels import adamw_prox, triton_adamw_prox
from lightning_mtl.sparsity.kernels.adamw_prox import (
    KernelFallbackWarning,
    KernelUnavailable,
    load,
    penalty_unsupported,
    warn_fallback,
)

__all__ = [
    "KernelFallbackWarning",
    "KernelUnavailable",
    "adamw_prox",
    "for_device",
    "load",
    "penalty_unsupported",
    "triton_adamw_prox",
    "warn_fallback",
]


def for_device(kernel: str, device: torch.device) -> ModuleType:
    """The kernel module `ProxAdamW(kernel=kernel)` uses for a weight on `device`: the Triton
    one for `"triton"`, and for `"auto"` on CUDA; the compiled C++ one otherwise."""
    if kernel == "triton" or (kernel == "auto" and device.type == "cuda"):
        return triton_adamw_prox
    return adamw_prox
