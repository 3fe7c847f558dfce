"""Built-in tasks (losses, metric collections, visuals), task resolution and a user-defined task."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection

from lightning_mtl.tasks import (
    TASK_REGISTRY,
    BinaryClassificationTask,
    DepthTask,
    EdgeTask,
    NormalTask,
    SegmentationTask,
    TargetSpec,
    Task,
    build_task,
    register_task,
)
from tests.helpers import ForegroundTask

BUILTINS = {
    "seg": SegmentationTask,
    "depth": DepthTask,
    "normal": NormalTask,
    "edge": EdgeTask,
    "binary": BinaryClassificationTask,
}
NYU_TARGETS = {
    "seg": TargetSpec("seg", num_classes=13),
    "depth": TargetSpec("depth"),
    "normal": TargetSpec("normal"),
}
CELEBA_TARGETS = {"seg": TargetSpec("seg", num_classes=3), "male": TargetSpec("binary")}


def _make(kind: str) -> Task:
    return BinaryClassificationTask("male") if kind == "binary" else BUILTINS[kind]()


def _sample(task: Task, n: int = 2, h: int = 6, w: int = 7, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random (prediction, target) pair in the batch conventions of `task`."""
    gen = torch.Generator().manual_seed(seed)
    if task.head == "classification":
        return torch.randn(n, generator=gen), (torch.rand(n, generator=gen) > 0.5).float()
    pred = torch.randn(n, task.out_channels, h, w, generator=gen)
    target = {
        SegmentationTask: lambda: torch.randint(0, task.out_channels, (n, h, w), generator=gen),
        DepthTask: lambda: torch.rand(n, 1, h, w, generator=gen) + 0.5,
        NormalTask: lambda: F.normalize(torch.randn(n, 3, h, w, generator=gen), dim=1),
        EdgeTask: lambda: (torch.rand(n, 1, h, w, generator=gen) > 0.7).float(),
    }[type(task)]()
    return pred, target


# --- registry and resolution -----------------------------------------------------------------


def test_builtin_kinds_registered():
    for kind, cls in BUILTINS.items():
        assert TASK_REGISTRY[kind] is cls


def test_build_task_from_registered_key_and_target_kinds():
    seg = build_task("seg", NYU_TARGETS)
    assert isinstance(seg, SegmentationTask)
    assert seg.num_classes == seg.out_channels == 13
    assert build_task("seg", CELEBA_TARGETS).num_classes == 3
    male = build_task("male", CELEBA_TARGETS)
    assert isinstance(male, BinaryClassificationTask)
    assert (male.key, male.target_key, male.head, male.out_channels) == (
        "male",
        "male",
        "classification",
        1,
    )


def test_build_task_unknown_key_lists_what_exists():
    with pytest.raises(ValueError, match="unknown task 'smile'") as err:
        build_task("smile", CELEBA_TARGETS)
    assert "['male', 'seg']" in str(err.value)
    assert all(kind in str(err.value) for kind in BUILTINS)


def test_build_task_rejects_targets_the_datamodule_lacks():
    with pytest.raises(ValueError, match=r"'depth'.*provides \['male', 'seg'\]"):
        build_task("depth", CELEBA_TARGETS)
    with pytest.raises(ValueError, match="kind 'keypoints'"):
        build_task("pose", {"pose": TargetSpec("keypoints")})
    with pytest.raises(ValueError, match="num_classes"):
        build_task("seg", {"seg": TargetSpec("seg")})


@pytest.mark.usefixtures("registries")
def test_register_task_rejects_duplicates_and_missing_main_metric():
    with pytest.raises(ValueError, match="already registered to SegmentationTask"):
        register_task("seg")(DepthTask)

    class NoMain(DepthTask):
        main_metric = "delta1"

    with pytest.raises(ValueError, match=r"main_metric \('delta1'\)"):
        register_task("nomain")(NoMain)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: SegmentationTask(num_classes=1),
            "num_classes must be an int in \\[2, 255\\].*got 1",
        ),
        (lambda: SegmentationTask(num_classes=2.5), "num_classes must be an int .*got 2.5"),
        (lambda: DepthTask(loss="huber"), "one of \\('mse', 'l1'\\), got 'huber'"),
        (lambda: EdgeTask(pos_weight=1.0), "pos_weight must be in \\(0, 1\\), got 1.0"),
        (lambda: EdgeTask(ods_thresholds=1), "ods_thresholds must be an int >= 2, got 1"),
        (lambda: NormalTask(key="a/b"), "without '/'"),
    ],
)
def test_constructor_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- losses ----------------------------------------------------------------------------------


def test_seg_loss_known_value_and_ignore():
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[[0, 2, 255]]])
    expected = (-math.log(math.e / (math.e + 2)) - math.log(1 / (2 + math.exp(2)))) / 2
    task = SegmentationTask(num_classes=3)
    assert task.loss(pred, target).item() == pytest.approx(expected)
    pred[0, :, 0, 2] = torch.tensor([-9.0, 9.0, 0.0])  # an ignored pixel
    assert task.loss(pred, target).item() == pytest.approx(expected)


@pytest.mark.parametrize(("loss", "expected"), [("mse", (1 + 4) / 2), ("l1", (1 + 2) / 2)])
def test_depth_loss_known_value_and_mask(loss, expected):
    target = torch.tensor([2.0, 3.0, 0.0, 0.0]).view(1, 1, 2, 2)
    pred = torch.tensor([3.0, 1.0, 7.0, -1.0]).view(1, 1, 2, 2)
    task = DepthTask(loss=loss)
    assert task.loss(pred, target).item() == pytest.approx(expected)
    assert task.loss(pred + 50 * (target == 0), target).item() == pytest.approx(expected)


def test_normal_loss_known_value_and_mask():
    target = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    pred = torch.tensor([[0.0, 0.0, 5.0], [0.0, 3.0, 0.0], [0.0, -2.0, 0.0], [1.0, 2.0, 3.0]])
    to_map = lambda x: x.T.reshape(1, 3, 2, 2)  # noqa: E731
    task = NormalTask()
    expected = (0 + 1 + 2) / 3  # same direction, orthogonal, opposite; the last pixel is invalid
    assert task.loss(to_map(pred), to_map(target)).item() == pytest.approx(expected)
    pred[3] = torch.tensor([-4.0, 0.5, 0.0])
    assert task.loss(to_map(pred), to_map(target)).item() == pytest.approx(expected)


def test_edge_loss_is_balanced_bce():
    pred = torch.tensor([2.0, -1.0, 0.5, -3.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 / (1 + math.exp(x))))

    for w in (0.95, 0.7):
        terms = [
            (w if y else 1 - w) * bce(x, y)
            for x, y in zip(pred.flatten(), target.flatten(), strict=True)
        ]
        got = EdgeTask(pos_weight=w).loss(pred, target).item()
        assert got == pytest.approx(sum(float(t) for t in terms) / 4, rel=1e-6)


def test_binary_loss_is_bce_on_logits():
    logits, target = torch.tensor([3.0, -2.0]), torch.tensor([1.0, 1.0])
    expected = (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(2.0))) / 2
    task = BinaryClassificationTask("smile")
    assert task.loss(logits, target).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("task", "pred", "target"),
    [
        (SegmentationTask(num_classes=3), torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255)),
        (DepthTask(), torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),
        (DepthTask(loss="l1"), torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),
        (NormalTask(), torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)),
    ],
)
def test_no_valid_pixel_gives_zero_loss_with_gradient(task, pred, target):
    pred.requires_grad_(True)
    loss = task.loss(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("kind", BUILTINS)
def test_losses_backpropagate(kind):
    task = _make(kind)
    pred, target = _sample(task)
    pred.requires_grad_(True)
    loss = task.loss(pred, target)
    assert loss.dim() == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert pred.grad.abs().sum() > 0


# --- metric collections ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", BUILTINS)
def test_metric_names_directions_and_fresh_collections(kind):
    task = _make(kind)
    first, second = task.build_metrics(), task.build_metrics()
    assert isinstance(first, MetricCollection)
    assert set(first) == set(task.higher_is_better)
    assert task.main_metric in task.higher_is_better
    pred, target = _sample(task)
    first.update(task.metric_input(pred), target)
    result = first.compute()
    assert set(result) == set(task.higher_is_better)
    assert all(torch.isfinite(v) for v in result.values())
    assert all(not m.update_called for m in second.values())


def test_metric_names_are_the_documented_keys():
    assert set(SegmentationTask.higher_is_better) == {"miou", "pixel_acc", "iou"}
    assert set(DepthTask.higher_is_better) == {"abs_err", "rel_err", "rmse"}
    assert set(NormalTask.higher_is_better) == {
        "cos_sim",
        "mean_angle",
        "median_angle",
        "pct_11_25",
        "pct_22_5",
        "pct_30",
    }
    assert set(EdgeTask.higher_is_better) == {"f1", "ods_f1"}
    assert set(BinaryClassificationTask.higher_is_better) == {"acc", "f1"}


def test_seg_metrics_match_numpy_confusion_matrix():
    task = SegmentationTask(num_classes=4)  # class 3 never appears: left out of mIoU
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]], [[0, 1, 2, 255], [1, 1, 1, 0]]])
    labels = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 3]], [[0, 1, 2, 2], [1, 0, 1, 0]]])
    logits = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    metrics = task.build_metrics()
    metrics.update(task.metric_input(logits[:1]), target[:1])
    metrics.update(task.metric_input(logits[1:]), target[1:])
    result = metrics.compute()

    t, p = target.numpy().ravel(), labels.numpy().ravel()
    lab = t != 255
    conf = np.zeros((4, 4))
    np.add.at(conf, (t[lab], p[lab]), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    assert result["miou"].item() == pytest.approx(np.mean(tp[present] / union[present]))
    assert result["pixel_acc"].item() == pytest.approx(tp.sum() / lab.sum())
    # per image: 4 of 6 correct -> 4/8; 6 of 7 correct -> 6/8
    assert result["iou"].item() == pytest.approx((4 / 8 + 6 / 8) / 2)


def test_edge_and_binary_metrics_apply_sigmoid():
    logits = torch.tensor([2.0, -2.0, 0.1, -0.1])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])  # at 0.5: TP, TN, FP, FN
    binary = BinaryClassificationTask("male")
    result = binary.build_metrics()(binary.metric_input(logits), target)
    assert result["acc"].item() == pytest.approx(0.5)
    assert result["f1"].item() == pytest.approx(0.5)
    edge = EdgeTask(ods_thresholds=3)  # thresholds 0, 0.5, 1: best F1 is 0.5 (0.5) vs 2/3 (0)
    result = edge.build_metrics()(
        edge.metric_input(logits.view(1, 1, 2, 2)), target.view(1, 1, 2, 2)
    )
    assert result["f1"].item() == pytest.approx(0.5)
    assert result["ods_f1"].item() == pytest.approx(2 / 3)


def test_collections_keep_metrics_with_equal_first_states_apart():
    """A perfect first batch makes several states equal; they must still diverge later."""
    depth = DepthTask().build_metrics()
    target = torch.full((1, 1, 2, 2), 2.0)
    depth.update(target.clone(), target)
    depth.update(target + torch.tensor([4.0, 0, 0, 0]).view(1, 1, 2, 2), target)
    assert depth["abs_err"].compute().item() == pytest.approx(4 / 8)
    assert depth["rmse"].compute().item() == pytest.approx(math.sqrt(16 / 8))

    normal = NormalTask().build_metrics()
    up = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    tilted = torch.tensor([0.0, math.sin(math.radians(15)), math.cos(math.radians(15))])
    normal.update(up, up)
    normal.update(tilted.view(1, 3, 1, 1), up)  # 15°: between 11.25° and 22.5°
    result = normal.compute()
    assert (result["pct_11_25"].item(), result["pct_22_5"].item()) == (50.0, 100.0)


def test_metric_inputs():
    seg_logits = torch.randn(2, 5, 3, 3)
    assert torch.equal(
        SegmentationTask(num_classes=5).metric_input(seg_logits), seg_logits.argmax(1)
    )
    unit = NormalTask().metric_input(torch.randn(2, 3, 3, 3) * 7)
    assert torch.allclose(unit.norm(dim=1), torch.ones(2, 3, 3))
    probs = EdgeTask().metric_input(torch.tensor([-30.0, 0.0, 30.0]))
    assert torch.allclose(probs, torch.tensor([0.0, 0.5, 1.0]))


# --- visualisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BUILTINS)
def test_visualize_gives_two_rgb_images_in_unit_range(kind):
    task = _make(kind)
    pred, target = _sample(task)
    for image in task.visualize(pred[0], target[0]):
        assert image.dim() == 3
        assert image.shape[0] == 3
        assert image.dtype == torch.float32
        assert 0 <= image.min() <= image.max() <= 1


def test_seg_visualize_palette_is_fixed_and_ignore_is_black():
    task = SegmentationTask(num_classes=13)
    target = torch.tensor([[0, 12], [255, 3]])
    pred = F.one_hot(target.clamp(max=12), 13).permute(2, 0, 1).float()
    pred_img, target_img = task.visualize(pred, target)
    assert torch.equal(target_img[:, 1, 0], torch.zeros(3))
    assert (target_img[:, 0].sum(0) > 0).all()
    assert torch.equal(pred_img[:, 0], target_img[:, 0])
    assert torch.equal(SegmentationTask(num_classes=13).visualize(pred, target)[1], target_img)


# --- a user-defined task (`ForegroundTask`): subclass `Task`, register, build ----------------


@pytest.mark.usefixtures("registries")
def test_user_task_registers_builds_and_scores():
    register_task("fg")(ForegroundTask)
    task = build_task("fg", NYU_TARGETS)
    assert isinstance(task, ForegroundTask)
    assert (task.key, task.target_key, task.head) == ("fg", "seg", "dense")

    target = torch.tensor([[[0, 3, 255], [1, 0, 2]]])
    pred = torch.tensor([[[-5.0, 5.0, 5.0], [5.0, 5.0, -5.0]]]).unsqueeze(1).requires_grad_(True)
    loss = task.loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert pred.grad[0, 0, 0, 2] == 0  # the ignored pixel gets no gradient
    metrics = task.build_metrics()
    metrics.update(task.metric_input(pred.detach()), target)
    assert metrics.compute()["fg_acc"].item() == pytest.approx(3 / 5)
    assert set(metrics.compute()) == set(task.higher_is_better)
    images = task.visualize(pred[0].detach(), target[0])  # the base class's min-max images
    assert all(image.shape == (3, 2, 3) for image in images)

    with pytest.raises(ValueError, match=r"reads batch key 'seg'.*provides \['male'\]"):
        build_task("fg", {"male": TargetSpec("binary")})
