"""Compaction: physically remove the zero input groups of a sparse model, then save or export it.

A conv whose input group i is exactly zero multiplies channel i of its input by 0, whatever the
channel carries. When *every* reader of a channel has it zeroed and it is not a model output,
the channel is dead: its producer's output channel (conv/linear), the BN channel after it and the
readers' input slices can be removed with no change to the outputs, so no bias folding is needed.
torch-pruning's dependency graph finds the coupled layers: a residual-stream channel is produced
by every block's conv3/downsample of a stage (tied by the adds) and read by every block's conv1,
the next stage and the heads, and is removed only when all of them read it as zero.

A layer input whose channels are all dead keeps one channel (the lowest index): shapes stay valid
(no 0-channel conv) and the outputs stay exact, as the kept channel is still read with zero
weights.

Convs with `groups` keep equal group widths: a grouped conv loses input channels only at the same
position in every conv group (its input groups, see `sparsity.groups`), and output channels only
as many from each conv group. A channel-wise (depthwise) conv passes its channels through, one
slot each: the slot goes with its channel. A norm over several channels at once (LayerNorm, as in
ConvNeXt, or GroupNorm) would change if one of them went, so channels it normalises are kept.

`round_to` keeps every compacted channel count a multiple of it (8 by default: SIMD lanes and
GPU tensor-core tiles run odd widths below peak): the fewest dead channels are kept, still read
as zero, so outputs stay exact. What `compact` kept is its `CompactionPlan` (`sparsity.plan`),
which rebuilds the compacted architecture from the dense one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from torch import Tensor, nn

from lightning_mtl.sparsity.plan import CompactionPlan, axis_size

__all__ = ["CompactionReport", "compact", "export_onnx", "export_torchscript", "macs_and_params"]

#: Modules with parameters that `compact` handles exactly (the norms in `COUPLING_NORMS` by never
#: removing their channels); a module holding other parameters than per-channel scales of shape
#: [C, 1, 1] (ConvNeXt's `layer_scale`) is refused.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
)
#: Norms whose statistics mix channels: a channel they normalise is never removed.
COUPLING_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)
_CONSUMERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
_PRODUCERS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
#: the plan axis (`sparsity.plan`) each torch-pruning layer handler removes channels of
_AXES = {
    tp.prune_conv_out_channels: "out",
    tp.prune_linear_out_channels: "out",
    tp.prune_batchnorm_out_channels: "out",
    tp.prune_batchnorm_in_channels: "out",
    tp.prune_depthwise_conv_out_channels: "out",  # a depthwise conv's inputs go with its slots
    tp.prune_depthwise_conv_in_channels: "out",
    tp.prune_conv_in_channels: "in",
    tp.prune_linear_in_channels: "in",
}


@dataclass(frozen=True)
class CompactionReport:
    """What `compact` removed: parameters and MACs before/after (for `example_inputs`), the
    input channels removed per layer name (readers of a removed channel, in module order) and
    the plan of what every compacted layer kept."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    removed_channels: dict[str, int] = field(default_factory=dict)
    plan: CompactionPlan = field(default_factory=lambda: CompactionPlan({}))

    @property
    def summary(self) -> str:
        """One human-readable paragraph."""
        if not self.removed_channels:
            return f"no zero channel group to remove; {self.params_before:,} params unchanged"
        layers = ", ".join(f"{n} -{k}" for n, k in self.removed_channels.items())
        return (
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_before / self.params_after:.2f}x), MACs {self.macs_before:,} -> "
            f"{self.macs_after:,} ({self.macs_before / self.macs_after:.2f}x); input channels "
            f"removed: {layers}"
        )


def compact(
    model: nn.Module,
    example_inputs: Tensor | None = None,
    *,
    round_to: int | None = 8,
    removable: Mapping[str, Tensor] | None = None,
) -> CompactionReport:
    """Remove every dead channel of `model` in place (see the module docstring) and report it.

    `example_inputs` (default: one 3×64×64 image) is only used to trace the graph and count
    MACs. `round_to` (None or 1: no rounding) keeps the channel count of every compacted layer a
    multiple of it, by keeping the fewest dead channels (whole sets where grouped convs need
    them); a layer is never wider than it was. Works on any model built from
    `SUPPORTED_LAYERS`, per-channel scales and parameter-free ops (`MultiTaskModel`, a bare
    `DilatedResNet` or `TorchvisionBackbone`); raises `ValueError` naming any other parametrised
    module. Outputs are unchanged up to float rounding in eval mode. `removable` (conv or
    linear name → bool per input channel) restricts what may go: an input channel marked False
    counts as read whatever its weights (train-time compaction removes only groups that have
    stayed zero long enough); layers it does not name are judged by their weights alone.
    """
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be None or a positive channel count, got {round_to}")
    _check_supported(model)
    if example_inputs is None:
        param = next(model.parameters())
        example_inputs = torch.rand(1, 3, 64, 64, device=param.device, dtype=param.dtype)
    macs_before, params_before = macs_and_params(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    protected = {
        module: ~torch.as_tensor(removable[name]).cpu()
        for module, name in names.items()
        if removable is not None and name in removable
    }

    def reads(layer: nn.Module) -> Tensor:
        read = _reads(layer)
        return read | protected[layer] if layer in protected else read

    removed: dict[str, int] = defaultdict(int)
    kept: dict[str, dict[str, list[int]]] = defaultdict(dict)
    with _restore_mode(model), torch.enable_grad():
        graph, outputs = _trace(model, example_inputs)
        # every dead set is found before any surgery
        doomed = list(_dead_channels(graph, outputs, round_to or 1, reads))
        for root, dead in doomed:
            group = graph.get_pruning_group(root, _producer_fn(root), dead)
            for dep, idxs in group:
                if dep.handler in _CONSUMERS:
                    removed[names[dep.target.module]] += len(idxs)
            _record(group, names, model, kept)
            try:
                group.prune()
            except Exception as e:  # name the layer torch-pruning failed on
                raise RuntimeError(f"torch-pruning failed to prune {names[root]}: {e}") from e
    macs_after, params_after = macs_and_params(model, example_inputs)
    order = {n: i for i, n in enumerate(names.values())}
    return CompactionReport(
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        removed_channels=dict(sorted(removed.items(), key=lambda kv: order[kv[0]])),
        plan=CompactionPlan(dict(sorted(kept.items(), key=lambda kv: order.get(kv[0], -1)))),
    )


def _record(
    group: tp.Group,
    names: dict[nn.Module, str],
    model: nn.Module,
    kept: dict[str, dict[str, list[int]]],
) -> None:
    """Update `kept` (layer → axis → original indices still there) with what `group` removes."""
    going: dict[tuple[str, str], set[int]] = defaultdict(set)
    for item in group.items:
        target = item.dep.target.module
        if isinstance(target, nn.Parameter):  # a per-channel scale [C, 1, 1]
            name = next(n for n, p in model.named_parameters() if p is target)
            axis = "out"
        elif target in names:
            name, axis = names[target], _AXES.get(item.dep.handler)
            if axis is None:
                raise RuntimeError(f"compact() has no plan axis for removing channels of {name}")
        else:
            continue  # a parameter-free op (add, concat, the outputs)
        going[name, axis].update(item.idxs)
        if axis not in kept[name]:
            kept[name][axis] = list(range(axis_size(target, axis, name)))
    for (name, axis), idxs in going.items():
        kept[name][axis] = [c for i, c in enumerate(kept[name][axis]) if i not in idxs]


def _check_supported(model: nn.Module) -> None:
    """Refuse parametrised modules whose channels `compact` cannot remove exactly."""
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if isinstance(m, SUPPORTED_LAYERS) or all(_is_channel_scale(p) for p in own):
            continue
        raise ValueError(
            f"compact() does not support module {name!r} ({type(m).__name__}); supported "
            f"parametrised modules: {[t.__name__ for t in SUPPORTED_LAYERS]} and modules whose "
            "own parameters are per-channel scales of shape [C, 1, 1]"
        )


def _is_channel_scale(p: Tensor) -> bool:
    return p.dim() == 3 and p.shape[1:] == (1, 1)


def _trace(model: nn.Module, example_inputs: Tensor) -> tuple[tp.DependencyGraph, set]:
    """torch-pruning's dependency graph and the grad_fns of the model outputs it traced."""
    outputs: set = set()

    def forward(m: nn.Module, x: Tensor) -> object:
        out = m(x)
        outputs.update(t.grad_fn for t in tp.utils.flatten_as_list(out))
        return out

    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs, forward_fn=forward, verbose=False
        )
    except Exception as e:
        raise RuntimeError(f"torch-pruning could not trace {type(model).__name__}: {e}") from e
    return graph, outputs


def _dead_channels(
    graph: tp.DependencyGraph,
    outputs: set,
    round_to: int,
    reads: Callable[[nn.Module], Tensor],
) -> Iterator[tuple[nn.Module, list[int]]]:
    """(root conv/linear, its output channels to remove) for every coupled channel group.

    A channel is dead when at least one conv/linear reads it, every reader's weights reading it
    are exactly zero and it is not a model output. One channel per group always survives; a
    group normalised by a `COUPLING_NORMS` layer keeps all; grouped convs keep what they must
    (`_removable`); then dead channels are kept until the count is a multiple of `round_to`.
    """
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        if any(isinstance(item.dep.target.module, COUPLING_NORMS) for item in group.items):
            continue
        n = len(group[0].root_idxs)
        read = torch.zeros(n, dtype=torch.long)  # counts: a root channel may map to many slices
        live = torch.zeros(n, dtype=torch.long)
        for item in group.items:
            dep, roots = item.dep, torch.as_tensor(item.root_idxs)
            if dep.handler in _CONSUMERS:  # a reader, even one whose own output is an output
                read.index_add_(0, roots, torch.ones_like(roots))
                live.index_add_(0, roots, reads(dep.target.module)[item.idxs].long())
            elif dep.target.grad_fn in outputs:
                live.index_add_(0, roots, torch.ones_like(roots))
        dead = (read > 0) & (live == 0)
        if dead.all():
            dead[0] = False
        dead = _rounded(group, _removable(group, dead), round_to).nonzero().flatten().tolist()
        if dead:
            yield group[0].dep.target.module, dead


def _reads(layer: nn.Module) -> Tensor:
    """Per input channel of a conv (any `groups`) or linear layer: any nonzero weight reads it."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        return weight.ne(0).any(0).cpu()
    g = layer.groups  # conv group k: output rows k·O/g…, input channels k·I/g…
    per_group = weight.reshape(g, weight.shape[0] // g, weight.shape[1], -1)
    return per_group.ne(0).any(3).any(1).flatten().cpu()


def _removable(group: tp.Group, dead: Tensor) -> Tensor:
    """`dead` less what the grouped convs of `group` must keep to keep equal group widths.

    torch-pruning removes a grouped conv's inputs by their position in the first conv group, so
    a position goes only when it is dead in every conv group; outputs go as many per conv group
    as the conv group with the fewest dead ones has (the lowest first). A conv whose channels the
    group holds only in part keeps them all. Repeated until no constraint removes more.
    """
    dead = dead.clone()
    grids = []  # (is_input, [conv groups, channels per conv group] of root indices)
    for item in group.items:
        conv, handler = item.dep.target.module, item.dep.handler
        if (
            not isinstance(conv, nn.Conv2d)
            or conv.groups == 1
            or handler not in _PRODUCERS + _CONSUMERS
        ):
            continue  # channel-wise convs (torch-pruning's depthwise handlers) pass channels on
        is_input = handler in _CONSUMERS
        size = conv.in_channels if is_input else conv.out_channels
        roots = torch.as_tensor(item.root_idxs)
        if sorted(item.idxs) != list(range(size)):
            dead[roots] = False
            continue
        local = torch.empty(size, dtype=torch.long)
        local[torch.as_tensor(item.idxs)] = roots
        grids.append((is_input, local.view(conv.groups, -1)))
    changed = True
    while changed:
        changed = False
        for is_input, grid in grids:
            d = dead[grid]
            # inputs: positions dead in every conv group; outputs: the first k of each conv group
            allowed = d.all(0, keepdim=True) if is_input else d.cumsum(1) <= d.sum(1).min()
            kept = d & ~allowed
            if kept.any():
                dead[grid[kept]] = False
                changed = True
    return dead


def _rounded(group: tp.Group, dead: Tensor, round_to: int) -> Tensor:
    """`dead` less the fewest channels that leave a multiple of `round_to` kept (or all).

    Revives the highest dead channel one at a time and reapplies `_removable`, which may revive
    a whole set (one per conv group) where a grouped conv needs equal group widths.
    """
    while int((~dead).sum()) % round_to and dead.any():
        dead[int(dead.nonzero().max())] = False  # `_removable` returned a copy
        dead = _removable(group, dead)
    return dead


def _producer_fn(module: nn.Module) -> object:
    """torch-pruning's output-channel pruning function for a conv or linear layer."""
    return _PRODUCERS[0] if isinstance(module, nn.Conv2d) else _PRODUCERS[1]


def macs_and_params(model: nn.Module, example_inputs: Tensor) -> tuple[int, int]:
    """(MACs, params) as torch-pruning counts them, leaving the model's mode as it was."""
    with _restore_mode(model), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


@contextlib.contextmanager
def _restore_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule back in its train/eval mode (torch-pruning leaves models in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def export_torchscript(model: nn.Module, path: str | Path, example_inputs: Tensor) -> None:
    """Script the model (dict outputs kept) and save it; load with `torch.jit.load`.

    Puts `model` in eval mode; `example_inputs` checks that the scripted model runs. torch marks
    TorchScript deprecated; that warning is silenced here, as scripting is what was asked for.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        scripted = torch.jit.script(model.eval())
    scripted(example_inputs)
    scripted.save(str(path))


class _TupleOutputs(nn.Module):
    """The model with its dict outputs as a tuple in task order (ONNX outputs are positional)."""

    def __init__(self, model: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        return tuple(out[k] for k in self.keys)


def export_onnx(model: nn.Module, path: str | Path, example_inputs: Tensor) -> list[str]:
    """Export to ONNX (torch.export-based exporter) with input `images`, a dynamic batch axis and
    outputs named by task in dict order; returns the output names.

    Dict outputs become a tuple (ONNX outputs are positional); a model returning one tensor (a
    bare backbone) gets one output named `features`. Puts `model` in eval mode.
    """
    model.eval()
    with torch.no_grad():
        out = model(example_inputs)
    if isinstance(out, dict):
        names, module = list(out), _TupleOutputs(model, list(out)).eval()
    else:
        names, module = ["features"], model
    torch.onnx.export(
        module,
        (example_inputs,),
        str(path),
        input_names=["images"],
        output_names=names,
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        dynamo=True,
        verbose=False,
    )
    return names
