"""Which weights are grouped, and how a 4-D conv weight splits into channel groups.

A group is a slice of a conv weight W ∈ R^{O×I/g×kh×kw} (g = `groups`): `in_channel` groups are
W[:, j] (p_g = O·kh·kw elements), `out_channel` groups W[o]. An input group is the unit that
compaction can remove: when every layer reading a channel has its group zero, the channel goes.

- Dense conv (g = 1): W[:, i] holds every weight reading input channel i.
- Grouped conv (1 < g < I, e.g. ResNeXt's g = 32): conv group k reads input channels
  k·I/g … (k+1)·I/g − 1, and W[:, j] holds the weights reading channel j of *every* conv group
  (g channels, one per conv group). A conv keeps equal group widths, so its inputs can only go g
  at a time, one from each conv group: W[:, j] is exactly such a removable set.
- Channel-wise (depthwise) conv (g = I, as in MobileNet, EfficientNet, ConvNeXt): each filter
  reads one channel and writes its own, so input and output channel are one slot, and zeroing a
  filter leaves a constant channel (the norm after it adds its shift), not a removable one. Such
  convs are not grouped (`is_channelwise`); the slot goes with its channel when the layers
  reading the depthwise output have zeroed it (the projection conv, the squeeze-excitation).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

from torch import Tensor, nn

from lightning_mtl.registry import check_choice

GroupBy = Literal["in_channel", "out_channel"]

NamedWeights = list[tuple[str, Tensor]]


def reduce_dims(group_by: str) -> tuple[int, ...]:
    """Dims of a [O, I, kh, kw] weight summed over inside one group."""
    check_choice("group_by", group_by, GroupBy)
    return (0, 2, 3) if group_by == "in_channel" else (1, 2, 3)


def group_size(weight: Tensor, group_by: str) -> int:
    """Elements per group, p_g (O·kh·kw for input-channel groups)."""
    dims = reduce_dims(group_by)
    size = 1
    for d in dims:
        size *= weight.shape[d]
    return size


def live_groups(weight: Tensor, group_by: str) -> Tensor:
    """Bool vector, one entry per group: True unless every element of the group is exactly 0."""
    return weight.detach().ne(0).any(dim=reduce_dims(group_by))


def is_channelwise(conv: nn.Conv2d) -> bool:
    """Whether each conv group reads a single input channel (a depthwise conv): not grouped."""
    return conv.groups > 1 and conv.groups == conv.in_channels


def conv_weights(model: nn.Module, pattern: str | None = None) -> NamedWeights:
    """The grouped conv weights of a model, in forward order, with stable names.

    A model whose backbone exposes `conv_layers()` (the library's backbones) contributes exactly
    those convs, named as the backbone names them (`layer3.3.conv1`); any other module contributes
    every `nn.Conv2d` it holds but the channel-wise ones. `pattern` (a regex searched in the
    name) keeps fewer.
    """
    source = getattr(model, "backbone", model)
    if hasattr(source, "conv_layers"):
        convs = source.conv_layers()
    else:
        convs = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and not is_channelwise(m)
        ]
    named = [(name, conv.weight) for name, conv in convs]
    if pattern is not None:
        regex = re.compile(pattern)
        named = [(n, w) for n, w in named if regex.search(n)]
        if not named:
            raise ValueError(
                f"sparse_layers pattern {pattern!r} matches no conv layer; the layers are "
                f"{[n for n, _ in convs]}"
            )
    return named


def as_named_weights(source: nn.Module | Mapping[str, Tensor] | Iterable) -> NamedWeights:
    """Accept a model, a name→weight mapping, or (name, weight) pairs / bare weights."""
    if isinstance(source, nn.Module):
        return conv_weights(source)
    if isinstance(source, Mapping):
        return list(source.items())
    named: NamedWeights = []
    for i, item in enumerate(source):
        named.append(item if isinstance(item, tuple) else (str(i), item))
    return named


def group_sum(x: Tensor, group_by: str) -> Tensor:
    """Per-group sums of a [O, I, kh, kw] tensor, shaped to broadcast against it.

    Input-channel groups reduce over the outer dim, done as a matrix-vector product over the
    contiguous rows: several times faster on CPU than a strided `sum(dim=(0, 2, 3))`.
    """
    check_choice("group_by", group_by, GroupBy)
    out_ch, in_ch = x.shape[:2]
    if group_by == "out_channel":
        return x.reshape(out_ch, -1).sum(1).view(out_ch, 1, 1, 1)
    ones = x.new_ones(out_ch)
    return (ones @ x.reshape(out_ch, -1)).view(in_ch, -1).sum(1).view(1, in_ch, 1, 1)
