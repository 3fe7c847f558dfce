"""The `Task` extension point: what a task is trained on, how it is scored, how its head looks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar, Literal, TypeVar

import torch
from torch import Tensor
from torchmetrics import MetricCollection

from lightning_mtl.registry import Registry
from lightning_mtl.targets import TargetSpec

HeadKind = Literal["dense", "classification"]


class Task(ABC):
    """One task of a multi-task model.

    A task owns its key, the batch key of its target, the shape of its head output, its loss,
    its metrics (a fresh `MetricCollection` per split) and the direction of each metric.
    Subclass it and decorate with `register_task("key")` to add a task; see the README.
    """

    head: ClassVar[HeadKind] = "dense"
    #: metric name -> True when higher is better, for every metric of `build_metrics()`
    higher_is_better: ClassVar[Mapping[str, bool]] = {}
    #: the metric a paper table reports (model selection, Δm)
    main_metric: ClassVar[str]

    def __init__(self, key: str, target_key: str | None = None) -> None:
        if not key or "/" in key:
            raise ValueError(f"task key must be a non-empty string without '/', got {key!r}")
        self.key = key
        self.target_key = target_key or key

    @property
    @abstractmethod
    def out_channels(self) -> int:
        """Channels (dense) or logits (classification) the head emits."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of a prediction (already at the target's resolution) against its target.

        Built-in tasks compute it in at least float32 whatever the prediction's dtype
        (bf16-mixed; float64 stays float64).
        """

    @abstractmethod
    def build_metrics(self) -> MetricCollection:
        """A fresh metric collection, accumulated over a whole split and reduced across ranks."""

    def metric_input(self, pred: Tensor) -> Tensor:
        """Turn the raw head output into what the metrics take (probabilities, unit vectors…)."""
        return pred

    def metric_target(self, target: Tensor) -> Tensor:
        """Turn the batch target into what the metrics take (identity for the built-in tasks)."""
        return target

    def visualize(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Prediction and target of one sample as float images [3,H,W] in [0,1] for logging."""
        return _to_rgb(pred.detach().float()), _to_rgb(target.detach().float())

    @classmethod
    def from_target(cls, key: str, spec: TargetSpec) -> Task:
        """Build the task for a datamodule target (override to read e.g. `num_classes`)."""
        return cls(key=key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, target_key={self.target_key!r})"


def loss_precision(x: Tensor) -> Tensor:
    """`x` in at least float32: half-precision predictions are upcast, float64 is kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask` is True; 0 (still differentiable) when nothing is valid.

    Values under a False mask never reach the result or its gradient, even when NaN or inf.
    """
    return torch.where(mask, values, 0).sum() / mask.sum().clamp_min(1)


def _to_rgb(x: Tensor) -> Tensor:
    """Min-max scale a [C,H,W] or [H,W] map to a grey or RGB image in [0,1]."""
    if x.dim() == 2:
        x = x[None]
    if x.shape[0] not in (1, 3):
        x = x[:1]
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).eps)
    return x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x


#: task kinds by name: the built-in `seg`, `depth`, `normal`, `edge`, `binary` and user tasks
TASK_REGISTRY: Registry[type[Task]] = Registry("task kind")
_TaskT = TypeVar("_TaskT", bound=type[Task])


def list_tasks() -> list[str]:
    """The registered task kinds."""
    return TASK_REGISTRY.names()


def register_task(kind: str) -> Callable[[_TaskT], _TaskT]:
    """Class decorator: make a `Task` subclass buildable under `kind` (task key or target kind)."""

    def decorator(cls: _TaskT) -> _TaskT:
        main = getattr(cls, "main_metric", None)
        if main not in cls.higher_is_better:
            raise ValueError(
                f"{cls.__name__}.main_metric ({main!r}) must be one of its higher_is_better keys "
                f"{sorted(cls.higher_is_better)}"
            )
        TASK_REGISTRY.register(kind, cls)
        # checkpoints keep the module's tasks in their hyperparameters: let them load with
        # torch.load(weights_only=True), the default when Lightning resumes a run
        torch.serialization.add_safe_globals([cls])
        return cls

    return decorator


def build_task(key: str, targets: Mapping[str, TargetSpec]) -> Task:
    """Resolve a task key against the registry and what the datamodule provides.

    A key registered directly (a user task) wins; otherwise the datamodule's target of that
    name decides the kind (`seg` → segmentation, `male` → binary classification, …).
    """
    if key in TASK_REGISTRY:
        cls = TASK_REGISTRY.get(key)
        spec = targets.get(key, TargetSpec(kind=key))
    elif key in targets:
        spec = targets[key]
        if spec.kind not in TASK_REGISTRY:
            raise ValueError(
                f"datamodule target {key!r} has kind {spec.kind!r}, which no task handles; "
                f"registered kinds: {TASK_REGISTRY.names()}"
            )
        cls = TASK_REGISTRY.get(spec.kind)
    else:
        raise ValueError(
            f"unknown task {key!r}: the datamodule provides {sorted(targets)} and the registered "
            f"task kinds are {TASK_REGISTRY.names()}"
        )
    task = cls.from_target(key, spec)
    if task.target_key not in targets:
        raise ValueError(
            f"task {key!r} reads batch key {task.target_key!r}, which the datamodule does not "
            f"provide; it provides {sorted(targets)}"
        )
    return task
