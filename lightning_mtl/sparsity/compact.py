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
"""

from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from torch import Tensor, nn

__all__ = [
    "CompactionReport",
    "compact",
    "export_onnx",
    "export_torchscript",
    "load_compacted",
    "save_compacted",
]

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


@dataclass(frozen=True)
class CompactionReport:
    """What `compact` removed: parameters and MACs before/after (for `example_inputs`) and the
    input channels removed per layer name (readers of a removed channel, in module order)."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    removed_channels: dict[str, int] = field(default_factory=dict)

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


def compact(model: nn.Module, example_inputs: Tensor | None = None) -> CompactionReport:
    """Remove every dead channel of `model` in place (see the module docstring) and report it.

    `example_inputs` (default: one 3×64×64 image) is only used to trace the graph and count
    MACs. Works on any model built from `SUPPORTED_LAYERS`, per-channel scales and
    parameter-free ops (`MultiTaskModel`, a bare `DilatedResNet` or `TorchvisionBackbone`);
    raises `ValueError` naming any other parametrised module. Outputs are unchanged up to float
    rounding in eval mode.
    """
    _check_supported(model)
    if example_inputs is None:
        param = next(model.parameters())
        example_inputs = torch.rand(1, 3, 64, 64, device=param.device, dtype=param.dtype)
    macs_before, params_before = macs_and_params(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    removed: dict[str, int] = defaultdict(int)
    with _restore_mode(model), torch.enable_grad():
        graph, outputs = _trace(model, example_inputs)
        for root, dead in list(_dead_channels(graph, outputs)):  # plan all before any surgery
            group = graph.get_pruning_group(root, _producer_fn(root), dead)
            for dep, idxs in group:
                if dep.handler in _CONSUMERS:
                    removed[names[dep.target.module]] += len(idxs)
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
    )


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
    graph: tp.DependencyGraph, outputs: set
) -> Iterator[tuple[nn.Module, list[int]]]:
    """(root conv/linear, its output channels to remove) for every coupled channel group.

    A channel is dead when at least one conv/linear reads it, every reader's weights reading it
    are exactly zero and it is not a model output. One channel per group always survives; a
    group normalised by a `COUPLING_NORMS` layer keeps all; grouped convs keep what they must
    (`_removable`).
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
                live.index_add_(0, roots, _reads(dep.target.module)[item.idxs].long())
            elif dep.target.grad_fn in outputs:
                live.index_add_(0, roots, torch.ones_like(roots))
        dead = (read > 0) & (live == 0)
        if dead.all():
            dead[0] = False
        dead = _removable(group, dead).nonzero().flatten().tolist()
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


def save_compacted(model: nn.Module, path: str | Path) -> None:
    """Save the whole compacted module (architecture included) with `torch.save`.

    A state dict would not fit the dense architecture; this pickle does, so loading needs no
    surgery: `load_compacted(path)` (= `torch.load(path, weights_only=False)`, which needs this
    library importable and runs pickle code: load trusted files only).
    """
    torch.save(model, path)


def load_compacted(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A module saved by `save_compacted`."""
    return torch.load(path, map_location=map_location, weights_only=False)


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
