"""Metrics that torchmetrics does not provide: paper IoU, masked depth/normal errors, ODS F1,
a batch-size-weighted mean that keeps NaN."""

from lightning_mtl.metrics.base import BatchWeightedMean, MeanOfValues, check_same_shape
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
    "NormalCosineSimilarity",
    "NormalMeanAngle",
    "NormalMedianAngle",
    "NormalWithinAngle",
    "ODSF1Score",
    "PerImageMicroIoU",
    "check_same_shape",
    "normal_errors",
]
