"""Non-finite predictions at validation/test give NaN metrics and a warning naming the task; the
model summary counts FLOPs."""

import math
import re
import warnings

import pytest
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

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
    nan_if_non_finite,
)
from lightning_mtl.modules.finite import NonFiniteWarning
from lightning_mtl.tasks import build_task
from tests.helpers import (
    count_scalar_reads,
    tiny_datamodule,
    tiny_model,
    tiny_module,
    tiny_trainer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: one task of each kind: segmentation, depth, normal, edge, binary classification
KINDS = ("seg", "depth", "normal", "edge", "sphere")
NAN = float("nan")


@pytest.fixture(scope="module")
def evaluated():
    """The tasks of `KINDS`, a validation batch and a tiny model's raw predictions on it."""
    data = tiny_datamodule(None)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    tasks = {k: build_task(k, data.targets) for k in KINDS}
    torch.manual_seed(0)
    with torch.no_grad():
        preds = tiny_model(tasks).eval()(batch["image"])
    return tasks, batch, preds


def _values(metrics, task, preds, target, mark=False):
    metrics.update(task.metric_input(preds), task.metric_target(target))
    if mark:
        for metric in metrics.values():
            metric.mark_non_finite()
    return {k: float(v) for k, v in metrics.compute().items()}


@pytest.mark.parametrize("key", KINDS)
def test_every_metric_of_a_task_with_a_nan_prediction_is_nan(evaluated, key):
    tasks, batch, preds = evaluated
    task, pred, target = tasks[key], preds[key], batch[tasks[key].target_key]
    plain = _values(task.build_metrics(), task, pred, target)
    assert plain == _values(nan_if_non_finite(task.build_metrics()), task, pred, target)
    assert all(math.isfinite(v) for v in plain.values()), "finite predictions, finite metrics"

    metrics = nan_if_non_finite(task.build_metrics())
    metrics.update(task.metric_input(pred), task.metric_target(target))
    bad = pred.clone()
    bad.view(-1)[0] = NAN
    values = _values(metrics, task, bad, target, mark=True)
    assert values.keys() == plain.keys()
    assert all(math.isnan(v) for v in values.values()), values
    metrics.reset()
    assert _values(metrics, task, pred, target) == plain, "a new split starts clean"


@pytest.mark.parametrize("non_finite", [False, True])
def test_a_flag_tensor_marks_without_a_host_read(evaluated, non_finite):
    """What the modules pass: the batch's flag, a bool tensor, added to the state unread."""
    tasks, batch, preds = evaluated
    task = tasks["depth"]
    metrics = nan_if_non_finite(task.build_metrics())
    metrics.update(task.metric_input(preds["depth"]), task.metric_target(batch["depth"]))
    with count_scalar_reads() as reads:
        for metric in metrics.values():
            metric.mark_non_finite(torch.tensor(non_finite))
    assert not reads.origins
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert all(math.isnan(v) == non_finite for v in values.values()), values


# (metric, preds, target) with a NaN prediction at a valid element: the metric itself gives NaN
_normals = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # [1,3,1,2], unit normals
_nan_normals = _normals.clone()
_nan_normals[0, :, 0, 0] = NAN
OWN_METRICS = {
    "normal cos": (NormalCosineSimilarity(), _nan_normals, _normals),
    "normal mean": (NormalMeanAngle(), _nan_normals, _normals),
    "normal median": (NormalMedianAngle(), _nan_normals, _normals),
    "normal within": (NormalWithinAngle(11.25), _nan_normals, _normals),
    "depth abs": (DepthAbsError(), torch.tensor([[[[NAN, 1.0]]]]), torch.ones(1, 1, 1, 2)),
    "depth rel": (DepthRelError(), torch.tensor([[[[NAN, 1.0]]]]), torch.ones(1, 1, 1, 2)),
    "depth rmse": (DepthRMSE(), torch.tensor([[[[NAN, 1.0]]]]), torch.ones(1, 1, 1, 2)),
    "seg logits": (PerImageMicroIoU(), torch.tensor([[[[NAN, 0.0]], [[0.0, 1.0]]]]), None),
    "edge ods": (ODSF1Score(), torch.tensor([NAN, 0.9, 0.1]), torch.tensor([1, 1, 0])),
}


@pytest.mark.parametrize("name", OWN_METRICS)
def test_own_metrics_turn_a_nan_prediction_into_nan(name):
    metric, preds, target = OWN_METRICS[name]
    if target is None:  # seg logits [1,2,1,2]: labels [1,1,2]
        target = torch.tensor([[[0, 1]]])
    metric.update(preds, target)
    assert math.isnan(float(metric.compute()))


def test_median_angle_is_nan_not_a_too_good_zero():
    """NaN angles went to bin 0: a split of mostly NaN predictions gave a median near 0°."""
    target = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]]])
    preds = torch.full_like(target, NAN)
    preds[:, :, :, 2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)  # one pixel 90° off
    metric = NormalMedianAngle()
    metric.update(preds, target)
    assert math.isnan(float(metric.compute()))
    metric.reset()
    metric.update(preds[..., 2:], target[..., 2:])
    assert float(metric.compute()) == pytest.approx(90.0, abs=0.01)


def _nan_head(module, key):
    """Make the last bias of `key`'s head NaN: every prediction of that task is NaN."""
    *_, bias = (p for n, p in module.model.heads[key].named_parameters() if n.endswith("bias"))
    with torch.no_grad():
        bias.fill_(NAN)


def test_nan_head_warns_once_per_split_and_logs_nan_metrics(tmp_path):
    data = tiny_datamodule(None)
    module = tiny_module(data, ("seg", "depth", "normal", "sphere"))
    _nan_head(module, "normal")
    _nan_head(module, "sphere")
    trainer = tiny_trainer(tmp_path)
    for split, run in (("val", trainer.validate), ("test", trainer.test)):
        with pytest.warns(NonFiniteWarning) as caught:
            (logged,) = run(module, data, verbose=False)
        messages = [str(w.message) for w in caught if w.category is NonFiniteWarning]
        assert len(messages) == 1, messages  # one warning per split and epoch, at its end
        counts = {"normal": 2, "sphere": 2}  # both heads are NaN in both batches
        expected = f"task(s) {list(counts)} in epoch 0 (in {counts} of the 2 batches)"
        assert f"{split} prediction of {expected}" in messages[0]
        for name, value in logged.items():
            task = name.split("/")[1] if name.count("/") == 2 else None
            assert math.isnan(value) == (task in ("normal", "sphere", None)), name
        assert {f"{split}/normal/median_angle", f"{split}/sphere/f1"} <= logged.keys()


@pytest.mark.parametrize("taps", [None, {"seg": "layer3.0.conv1", "depth": "layer1.0.conv2"}])
def test_model_summary_counts_flops(tmp_path, capsys, taps):
    data = tiny_datamodule(("seg", "depth"))
    module = tiny_module(data, ("seg", "depth"), taps=taps)
    trainer = tiny_trainer(
        tmp_path,
        enable_model_summary=True,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)  # finite run: no warning
        trainer.fit(module, data)
    assert tuple(module.example_input_array.shape) == (1, 3, 32, 32)
    assert ModelSummary(module).total_flops > 0
    printed = capsys.readouterr().out  # the rich summary ("Total FLOPs: 4.1 M")
    assert re.search(r"Total FLOPs: [1-9]", printed), printed
