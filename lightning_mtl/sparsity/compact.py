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

#: Modules with parameters whose channel surgery is exact; any other parametrised module in the
#: model is refused (e.g. GroupNorm couples channels, grouped convs index inputs per group).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
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
    MACs. Works on any model built from `SUPPORTED_LAYERS` and parameter-free channel-wise ops
    (`MultiTaskModel`, a bare `DilatedResNet`); raises `ValueError` naming any other
    parametrised module. Outputs are unchanged up to float rounding in eval mode.
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
        if next(m.parameters(recurse=False), None) is None:
            continue
        if not isinstance(m, SUPPORTED_LAYERS):
            raise ValueError(
                f"compact() does not support module {name!r} ({type(m).__name__}); supported "
                f"parametrised modules: {[t.__name__ for t in SUPPORTED_LAYERS]}"
            )
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise ValueError(
                f"compact() does not support grouped conv {name!r} (groups={m.groups})"
            )


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

    A channel is dead when at least one conv/linear reads it, every reader's input slice is
    exactly zero and it is not a model output. One channel per group always survives.
    """
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        n = len(group[0].root_idxs)
        read = torch.zeros(n, dtype=torch.long)  # counts: a root channel may map to many slices
        live = torch.zeros(n, dtype=torch.long)
        for item in group.items:
            dep, roots = item.dep, torch.as_tensor(item.root_idxs)
            if dep.target.grad_fn in outputs:
                live.index_add_(0, roots, torch.ones_like(roots))
            elif dep.handler in _CONSUMERS:
                weight = dep.target.module.weight.detach()
                nonzero = weight[:, item.idxs].reshape(weight.shape[0], len(roots), -1).ne(0)
                read.index_add_(0, roots, torch.ones_like(roots))
                live.index_add_(0, roots, nonzero.any(2).any(0).long().cpu())
        dead = ((read > 0) & (live == 0)).nonzero().flatten().tolist()
        if len(dead) == n:
            dead = dead[1:]
        if dead:
            yield group[0].dep.target.module, dead


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
