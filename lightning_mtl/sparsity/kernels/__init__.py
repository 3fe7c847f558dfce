"""Compiled kernels of the sparsity optimizer: `adamw_prox` (C++, CPU), built on first use."""

from lightning_mtl.sparsity.kernels.adamw_prox import (
    KernelFallbackWarning,
    KernelUnavailable,
    adamw_prox_,
    load,
    penalty_unsupported,
    unsupported,
    warn_fallback,
)

__all__ = [
    "KernelFallbackWarning",
    "KernelUnavailable",
    "adamw_prox_",
    "load",
    "penalty_unsupported",
    "unsupported",
    "warn_fallback",
]
