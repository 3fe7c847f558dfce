"""Custom metrics against hand / numpy computations, including masks and accumulation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.utilities.data import dim_zero_sum

from lightning_mtl.metrics import (
    DepthAbsError,
    DepthRelError,
    DepthRMSE,
    NormalCosineSimilarity,
    NormalMeanAngle,
    NormalMedianAngle,
    NormalWithinAngle,
    ODSF1Score,
    PerImageMicroIoU,
)
from lightning_mtl.targets import IGNORE_INDEX

ALL_CUSTOM = [
    PerImageMicroIoU,
    DepthAbsError,
    DepthRelError,
    DepthRMSE,
    NormalCosineSimilarity,
    NormalMeanAngle,
    NormalMedianAngle,
    lambda: NormalWithinAngle(11.25),
]


def _accumulated(metric, batches):
    for preds, target in batches:
        metric.update(preds, target)
    return metric.compute()


@pytest.mark.parametrize("make", ALL_CUSTOM)
def test_states_are_sum_reduced(make):
    metric = make()
    assert metric._reductions
    assert all(fx is dim_zero_sum for fx in metric._reductions.values())


# --- segmentation: the paper's per-image micro IoU -------------------------------------------


def test_per_image_iou_by_hand():
    unlabelled = IGNORE_INDEX  # what the metric skips by default: the batch contract's
    target = torch.tensor(
        [
            [[0, 1], [2, unlabelled]],  # 3 labelled: 2 correct, 1 wrong -> 2 / (2 + 2) = 0.5
            [[1, 1], [1, 1]],  # 4 labelled, all correct -> 1
            [[unlabelled, unlabelled], [unlabelled, unlabelled]],  # nothing labelled: skipped
        ]
    )
    preds = torch.tensor([[[0, 1], [0, 2]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]])
    metric = PerImageMicroIoU()
    metric.update(preds, target)
    assert metric.compute().item() == pytest.approx((0.5 + 1.0) / 2)
    # logits give the same as their argmax
    logits = F.one_hot(preds, 3).permute(0, 3, 1, 2).float()
    assert PerImageMicroIoU()(logits, target).item() == pytest.approx(0.75)


def test_per_image_iou_is_micro_tp_over_tp_fp_fn():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 5, 6), generator=gen)
    target[:, 0] = IGNORE_INDEX
    preds = torch.randint(0, 4, (3, 5, 6), generator=gen)
    expected = []
    for p, t in zip(preds.numpy(), target.numpy(), strict=True):
        lab = t != IGNORE_INDEX
        tp = sum(np.sum((p == c) & (t == c) & lab) for c in range(4))
        fp = sum(np.sum((p == c) & (t != c) & lab) for c in range(4))
        fn = sum(np.sum((p != c) & (t == c) & lab) for c in range(4))
        expected.append(tp / (tp + fp + fn))
    metric = PerImageMicroIoU()
    got = _accumulated(metric, [(preds[:1], target[:1]), (preds[1:], target[1:])])
    assert got.item() == pytest.approx(np.mean(expected))


# --- depth -----------------------------------------------------------------------------------


def _depth_batches():
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(4, 1, 5, 7, generator=gen) * 5 + 0.5
    target[0, :, :3] = 0  # batches hold different numbers of valid pixels
    target[3] = 0
    preds = target + torch.randn(4, 1, 5, 7, generator=gen)
    preds[target == 0] = 1e6  # invalid pixels must not matter
    return preds, target


@pytest.mark.parametrize(
    ("metric_cls", "reference"),
    [
        (DepthAbsError, lambda p, g: np.mean(np.abs(p - g))),
        (DepthRelError, lambda p, g: np.mean(np.abs(p - g) / g)),
        (DepthRMSE, lambda p, g: np.sqrt(np.mean((p - g) ** 2))),
    ],
)
def test_depth_errors_match_numpy_and_accumulate(metric_cls, reference):
    preds, target = _depth_batches()
    valid = target.numpy() > 0
    expected = reference(preds.numpy()[valid].astype(np.float64), target.numpy()[valid])
    whole = metric_cls()(preds, target)
    split = _accumulated(metric_cls(), [(preds[:1], target[:1]), (preds[1:], target[1:])])
    assert whole.item() == pytest.approx(expected, rel=1e-5)
    assert split.item() == pytest.approx(expected, rel=1e-5)


def test_rmse_is_root_of_mse():
    target = torch.full((1, 1, 2, 2), 2.0)
    preds = target + torch.tensor([3.0, 3.0, 3.0, 3.0]).view(1, 1, 2, 2)  # MSE 9, RMSE 3
    assert DepthRMSE()(preds, target).item() == pytest.approx(3.0)


def test_depth_without_valid_pixel_is_nan_and_shapes_are_checked():
    assert math.isnan(DepthAbsError()(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item())
    with pytest.raises(ValueError, match="shapes differ"):
        DepthAbsError().update(torch.ones(2, 1, 2, 2), torch.ones(2, 2, 2))


# --- surface normals -------------------------------------------------------------------------


def _normal_batches(n=3, h=20, w=30):
    gen = torch.Generator().manual_seed(2)
    target = F.normalize(torch.randn(n, 3, h, w, generator=gen), dim=1)
    preds = (target + 0.6 * torch.randn(n, 3, h, w, generator=gen)) * 3.0  # not unit length
    target[0, :, :5] = 0  # invalid
    target[0, :, 5, 0] = 0  # an odd number of valid pixels: the median is one of them
    preds[0, :, :5] = torch.randn(3, 5, w, generator=gen)
    return preds, target


def _numpy_angles(preds, target):
    p = preds.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    g = target.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    valid = np.linalg.norm(g, axis=1) > 0
    p, g = p[valid], g[valid]
    cos = np.sum(p * g, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(g, axis=1)
    return cos, np.degrees(np.arccos(np.clip(cos, -1, 1)))


@pytest.mark.parametrize(
    ("make", "reference"),
    [
        (NormalCosineSimilarity, lambda cos, ang: cos.mean()),
        (NormalMeanAngle, lambda cos, ang: ang.mean()),
        (lambda: NormalWithinAngle(11.25), lambda cos, ang: 100 * np.mean(ang < 11.25)),
        (lambda: NormalWithinAngle(30.0), lambda cos, ang: 100 * np.mean(ang < 30)),
    ],
)
def test_normal_means_match_numpy_and_accumulate(make, reference):
    preds, target = _normal_batches()
    expected = reference(*_numpy_angles(preds, target))
    assert make()(preds, target).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    split = _accumulated(make(), [(preds[:1], target[:1]), (preds[1:], target[1:])])
    assert split.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_median_angle_within_histogram_resolution():
    preds, target = _normal_batches()
    _, angles = _numpy_angles(preds, target)
    metric = NormalMedianAngle()  # 0.01° bins
    got = _accumulated(metric, [(preds[:2], target[:2]), (preds[2:], target[2:])]).item()
    assert abs(got - np.median(angles)) <= 0.01
    coarse = NormalMedianAngle(bins=180)(preds, target).item()  # 1° bins
    assert abs(coarse - np.median(angles)) <= 1.0
    assert math.isnan(NormalMedianAngle()(preds, torch.zeros_like(target)).item())


def test_small_and_degenerate_angles():
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 3)
    tilt = math.radians(0.005)
    preds = torch.tensor(
        [[0.0, math.sin(tilt), math.cos(tilt)], [0.0, 0.0, 0.0], [0.0, 0.0, -2.0]]
    ).T.reshape(1, 3, 1, 3)  # 0.005°, a zero prediction (90°), the opposite direction (180°)
    assert NormalMeanAngle()(preds, target).item() == pytest.approx((0.005 + 90 + 180) / 3)
    assert NormalMedianAngle()(preds, target).item() == pytest.approx(90.0, abs=0.01)
    assert NormalCosineSimilarity()(preds, target).item() == pytest.approx((1 + 0 - 1) / 3)


# --- edges -----------------------------------------------------------------------------------


def test_ods_f1_is_best_f1_over_the_sweep():
    gen = torch.Generator().manual_seed(3)
    target = (torch.rand(4, 1, 16, 16, generator=gen) < 0.2).float()
    preds = (0.5 * target + 0.6 * torch.rand(4, 1, 16, 16, generator=gen)).clamp(0, 1)
    p, t = preds.numpy().ravel(), target.numpy().ravel() > 0.5
    best = 0.0
    for thr in np.linspace(0, 1, 11):
        pos = p >= thr
        tp, fp, fn = np.sum(pos & t), np.sum(pos & ~t), np.sum(~pos & t)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    split = _accumulated(
        ODSF1Score(thresholds=11), [(preds[:1], target[:1]), (preds[1:], target[1:])]
    )
    assert split.item() == pytest.approx(best, rel=1e-6)


def test_ods_f1_without_positives_is_zero_not_nan():
    assert ODSF1Score(thresholds=5)(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item() == 0


def test_batch_weighted_mean_weights_by_batch_size_and_keeps_nan():
    from lightning_mtl.metrics import BatchWeightedMean

    mean = BatchWeightedMean()
    mean.update(torch.tensor(1.0), 1)
    mean.update(torch.tensor(3.0), 3)
    assert float(mean.compute()) == pytest.approx((1 * 1 + 3 * 3) / 4)
    mean.update(torch.tensor(float("nan")), 2)
    assert torch.isnan(mean.compute())
