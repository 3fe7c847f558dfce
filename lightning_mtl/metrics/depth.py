"""Depth errors over valid pixels (target > 0), as pixel-global means over a split.

Custom because torchmetrics' regression metrics have no validity mask.
"""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from lightning_mtl.metrics.base import MeanOfValues, check_same_shape


class _DepthError(MeanOfValues):
    """Mean of a per-pixel error `_error(pred, target)` over pixels with target depth > 0."""

    higher_is_better = False

    @abstractmethod
    def _error(self, preds: Tensor, target: Tensor) -> Tensor:
        """Per-pixel error."""

    def values(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        check_same_shape(preds, target)
        return self._error(preds.float(), target.float()), target > 0


class DepthAbsError(_DepthError):
    """Mean absolute error |p − g| over valid pixels."""

    def _error(self, preds: Tensor, target: Tensor) -> Tensor:
        return (preds - target).abs()


class DepthRelError(_DepthError):
    """Mean absolute relative error |p − g| / g over valid pixels."""

    def _error(self, preds: Tensor, target: Tensor) -> Tensor:
        return (preds - target).abs() / target


class DepthRMSE(_DepthError):
    """Root of the mean squared error over valid pixels (a real RMSE, not MSE)."""

    def _error(self, preds: Tensor, target: Tensor) -> Tensor:
        return (preds - target).square()

    def compute(self) -> Tensor:
        return super().compute().sqrt()
