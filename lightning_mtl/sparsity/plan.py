"""The compaction plan: which channels of each layer a compaction kept, as plain data.

Indices count in the layer of the original (dense) architecture, so that a plan, applied to a
freshly built dense model, gives the compacted architecture back (`CompactionPlan.apply`), and
the same indices slice anything else laid out like the dense layer (optimizer moments,
statistics). `layers[name]` maps an axis to the kept indices, sorted: `"out"` for the output
channels of a conv or linear layer, the channels of a batch norm, the slots of a depthwise conv
(its inputs go with them) or dim 0 of a per-channel parameter; `"in"` for the input channels of
a conv (every conv group's, in order) or linear layer. An axis left out kept everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

__all__ = ["AXES", "CompactionPlan", "CompactionPlanError", "axis_size"]

AXES: tuple[str, ...] = ("out", "in")
# size of an axis, by the first attribute a layer has
_SIZE_ATTRS = {
    "out": ("out_channels", "out_features", "num_features"),
    "in": ("in_channels", "in_features"),
}
_DEPTHWISE = tp.ops.OPTYPE.DEPTHWISE_CONV


class CompactionPlanError(ValueError):
    """A compaction plan that does not fit the architecture or the weights it came with."""


@dataclass(frozen=True)
class CompactionPlan:
    """Kept channel indices per compacted layer (module or parameter name) and axis."""

    layers: dict[str, dict[str, list[int]]]

    def to_data(self) -> dict[str, dict[str, list[int]]]:
        """The plan as plain lists and dicts (what a file stores)."""
        return {
            name: {a: list(kept) for a, kept in axes.items()} for name, axes in self.layers.items()
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Mapping[str, list[int]]]) -> CompactionPlan:
        """The plan `to_data` wrote; refuses an unknown axis."""
        for name, axes in data.items():
            unknown = sorted(set(axes) - set(AXES))
            if unknown:
                raise CompactionPlanError(f"layer {name!r}: unknown axes {unknown}; axes: {AXES}")
        return cls(
            {name: {a: [int(i) for i in k] for a, k in axes.items()} for name, axes in data.items()}
        )

    def compose(self, later: CompactionPlan) -> CompactionPlan:
        """This plan followed by `later`, a plan of the model this one compacted (its indices
        count in the compacted layers): one plan whose indices count in the original layers,
        as train-time compaction stores it after every compaction."""
        layers = {name: dict(axes) for name, axes in self.layers.items()}
        for name, axes in later.layers.items():
            for axis, kept in axes.items():
                before = self.layers.get(name, {}).get(axis)
                kept = list(kept) if before is None else [before[i] for i in kept]
                layers.setdefault(name, {})[axis] = kept
        return CompactionPlan(layers)

    def expand(self, name: str, weight: Tensor, shape: Sequence[int]) -> Tensor:
        """The weight of the compacted conv `name` in the conv's original `shape`, the entries
        the plan removed as zeros (what the sparsity statistics of a compacted model count)."""
        axes = self.layers.get(name)
        if not axes:
            return weight
        rows = torch.as_tensor(axes.get("out", range(shape[0])), device=weight.device)
        # a grouped conv's "in" lists the kept inputs of every conv group; dim 1 holds group 0's
        inputs = axes.get("in", range(shape[1]))
        cols = torch.as_tensor([c % shape[1] for c in inputs][: weight.shape[1]])
        full = weight.new_zeros(tuple(shape))
        full[rows[:, None], cols.to(weight.device)] = weight
        return full

    def apply(self, model: nn.Module) -> None:
        """Shrink the dense `model` to the plan in place (torch-pruning's layer pruners).

        Raises `CompactionPlanError` naming a layer the model lacks, an axis the layer has not,
        or indices that are not sorted, distinct and within the dense layer's size.
        """
        for name, axes in self.layers.items():
            target = _lookup(model, name)
            for axis, kept in axes.items():
                size = axis_size(target, axis, name)
                if kept != sorted(set(kept)) or (kept and not 0 <= kept[0] <= kept[-1] < size):
                    raise CompactionPlanError(
                        f"layer {name!r} axis {axis!r}: kept indices must be sorted, distinct and "
                        f"in [0, {size}) (the layer's size in the architecture); got {kept}"
                    )
                removed = sorted(set(range(size)) - set(kept))
                if isinstance(target, nn.Parameter):
                    parent, _, attr = name.rpartition(".")
                    keep = torch.as_tensor(kept, device=target.device)
                    setattr(model.get_submodule(parent), attr, nn.Parameter(target[keep]))
                else:
                    pruner = tp.pruner.function.PrunerBox[tp.ops.module2type(target)]
                    prune = pruner.prune_out_channels if axis == "out" else pruner.prune_in_channels
                    prune(target, removed)


def _lookup(model: nn.Module, name: str) -> nn.Module | nn.Parameter:
    """The conv/linear/BN layer or parameter `name` of `model`."""
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    target = modules.get(name, params.get(name))
    if not isinstance(target, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.Parameter)):
        found = "none" if target is None else type(target).__name__
        raise CompactionPlanError(
            f"layer {name!r} of the plan is not a conv, linear, batch-norm layer or parameter of "
            f"the architecture (found: {found})"
        )
    return target


def axis_size(target: nn.Module | nn.Parameter, axis: str, name: str) -> int:
    """Channels of `target` along `axis`; refuses an axis the layer has not."""
    if isinstance(target, nn.Parameter) and axis == "out":
        return int(target.shape[0])
    depthwise = isinstance(target, nn.Conv2d) and tp.ops.module2type(target) == _DEPTHWISE
    no_axis = isinstance(target, nn.Parameter) or (depthwise and axis == "in")
    attrs = () if no_axis else _SIZE_ATTRS[axis]
    size = next((getattr(target, a) for a in attrs if hasattr(target, a)), None)
    if size is None:
        raise CompactionPlanError(
            f"layer {name!r} ({type(target).__name__}) has no {axis!r} axis to compact"
        )
    return int(size)
