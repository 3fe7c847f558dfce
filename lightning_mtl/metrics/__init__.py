"""Metrics that torchmetrics does not provide: paper IoU, masked depth/normal errors, ODS F1,
a batch-size-weighted mean that keeps NaN, a wrapper that turns NaN after a non-finite batch."""

from lightning_mtl.metrics.base import (
    BatchWeightedMean,
    MeanOfValues,
    NaNIfNonFinite,
    check_same_shape,
    nan_if_non_finite,
)
from lightning_mtl.metrics.depth import DepthAbsError, DepthRelError, DepthRMSE
from lightning_mtl.metrics.edge import ODSF1Score
from lightning_mtl.metrics.normal import (
    NormalCosineSimilarity,
    NormalMeanAngle,
    NormalMedianAngle,
    NormalWithinAngle,
    normal_errors,
)
from lightning_mtl.metrics.segmentation import PerImageMicroIoU

__all__ = [
    "BatchWeightedMean",
    "DepthAbsError",
    "DepthRMSE",
    "DepthRelError",
    "MeanOfValues",
    "NaNIfNonFinite",
    "NormalCosineSimilarity",
    "NormalMeanAngle",
    "NormalMedianAngle",
    "NormalWithinAngle",
    "ODSF1Score",
    "PerImageMicroIoU",
    "check_same_shape",
    "nan_if_non_finite",
    "normal_errors",
]
