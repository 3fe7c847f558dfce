"""`ModelSpec`: the network of a multi-task module as plain data, and the builder that makes it.

The LightningModules build their network from one `ModelSpec` and never branch on the
architecture themselves; the spec is also what a compacted model file stores (`to_data`) to
rebuild the network, what a checkpoint is checked against on resume, and what a fine-tuned
module starts from. `build_multitask_model` is the same builder with the spec's fields as
keyword arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from lightning_mtl.lomt.model import LayerOptimizedModel, TapOutput, TruncatedBackbone
from lightning_mtl.models.backbone import build_backbone
from lightning_mtl.models.heads import build_head
from lightning_mtl.models.multitask import MultiTaskModel
from lightning_mtl.registry import check_choice
from lightning_mtl.tasks import Task

__all__ = ["HeadSpec", "ModelSpec", "build_from_spec", "build_multitask_model"]


@dataclass(frozen=True)
class HeadSpec:
    """What the builder reads of a task: its head kind and output channels (a `Task` has both)."""

    head: str
    out_channels: int


@dataclass(frozen=True)
class ModelSpec:
    """A multi-task network: a shared backbone (by registered name) with one head per task.

    Fields hold plain data (str, int, float, bool, None, lists and dicts), so that two specs
    compare equal exactly when they build the same architecture and `to_data` can be saved
    without pickled code. Constructing normalises: tasks (`Task`s or `HeadSpec`s) become
    `HeadSpec`s, tuples in `backbone_options` lists (`TypeError` naming an option that is not
    plain data); an unknown `tap_output` is a `ValueError`.

    Args:
        tasks: task key → its head kind and output channels.
        backbone, backbone_options: the backbone's registered name and extra arguments.
        head_channels: channels of the DeepLabV3 heads.
        taps: `None`, the conventional `MultiTaskModel` with every head on the last feature
            map; or task key → backbone conv name, one per task: the LOMT model.
        tap_output: what a tap reads, the conv's output or its residual block's.
    """

    tasks: Mapping[str, HeadSpec | Task]
    backbone: str = "resnet50"
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    head_channels: int = 256
    taps: Mapping[str, str] | None = None
    tap_output: TapOutput = "conv"

    def __post_init__(self) -> None:
        heads = {k: HeadSpec(t.head, int(t.out_channels)) for k, t in self.tasks.items()}
        options = _plain(dict(self.backbone_options or {}), "backbone_options")
        object.__setattr__(self, "tasks", heads)
        object.__setattr__(self, "backbone_options", options)
        object.__setattr__(self, "head_channels", int(self.head_channels))
        object.__setattr__(self, "taps", None if self.taps is None else dict(self.taps))
        check_choice("tap_output", self.tap_output, TapOutput)

    def to_data(self) -> dict[str, Any]:
        """The spec as plain containers (tasks as `{head, out_channels}` dicts)."""
        return asdict(self)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec `to_data` gave (also the `model_spec` of compacted files written before
        `ModelSpec` existed: the same data)."""
        heads = {key: HeadSpec(**head) for key, head in data["tasks"].items()}
        return cls(**{**data, "tasks": heads})

    def network_options(self) -> dict[str, Any]:
        """Every field but `tasks`: the network arguments of `build_multitask_model` and the
        modules."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tasks"}

    def without_pretrained_weights(self) -> ModelSpec:
        """The spec without the backbone's `weights` option: for a network whose state dict
        is loaded afterwards, which then needs no download."""
        options = {k: v for k, v in self.backbone_options.items() if k != "weights"}
        return replace(self, backbone_options=options)


def build_multitask_model(
    tasks: Mapping[str, Task | HeadSpec],
    *,
    backbone: str = "resnet50",
    backbone_options: Mapping[str, Any] | None = None,
    head_channels: int = 256,
    taps: Mapping[str, str] | None = None,
    tap_output: TapOutput = "conv",
) -> MultiTaskModel | LayerOptimizedModel:
    """The network of `ModelSpec(tasks, ...)` (`build_from_spec`), as keyword arguments."""
    spec = ModelSpec(
        tasks,
        backbone=backbone,
        backbone_options=backbone_options or {},
        head_channels=head_channels,
        taps=taps,
        tap_output=tap_output,
    )
    return build_from_spec(spec)


def build_from_spec(spec: ModelSpec) -> MultiTaskModel | LayerOptimizedModel:
    """The network `spec` describes.

    Without taps: the conventional `MultiTaskModel`, every head on the last feature map. With
    taps: the LOMT model, the backbone cut after the deepest tap (`TruncatedBackbone`) and each
    head built for its tap's channel count (`LayerOptimizedModel`). Heads are chosen by each
    task's `head` kind.
    """
    net = build_backbone(spec.backbone, **spec.backbone_options)
    if spec.taps is None:
        heads = {
            key: build_head(task.head, net.out_channels, task.out_channels, spec.head_channels)
            for key, task in spec.tasks.items()
        }
        return MultiTaskModel(net, heads)
    _check_taps(spec.taps, list(spec.tasks))
    task_taps = {key: spec.taps[key] for key in spec.tasks}
    truncated = TruncatedBackbone(net, list(task_taps.values()), spec.tap_output)
    heads = {
        key: build_head(
            task.head,
            truncated.out_channels[task_taps[key]],
            task.out_channels,
            spec.head_channels,
        )
        for key, task in spec.tasks.items()
    }
    return LayerOptimizedModel(truncated, heads, task_taps)


def _plain(value: Any, where: str) -> Any:
    """`value` with tuples as lists; refuses anything but JSON's types."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"{where} is a {type(value).__name__}, not plain data (str, number, list, dict)"
    )


def _check_taps(taps: Mapping[str, str], tasks: list[str]) -> None:
    missing = [k for k in tasks if k not in taps]
    if missing:
        raise ValueError(
            f"taps must name a conv for every task; tasks without a tap: {missing}; "
            f"taps given for: {list(taps)}"
        )
    unknown = [k for k in taps if k not in tasks]
    if unknown:
        raise ValueError(f"taps names tasks that are not trained {unknown}; the tasks are {tasks}")
