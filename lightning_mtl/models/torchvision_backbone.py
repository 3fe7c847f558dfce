"""Torchvision classification networks as backbones: their convolutional body, by model name.

`torchvision_backbone("convnext_tiny")` builds the network with `torchvision.models.get_model`,
optionally loads its ImageNet weights offline, and keeps everything before its pooling and
classifier (`TorchvisionBackbone`). Registered in `BACKBONES` for every name of
`TORCHVISION_BACKBONES`: the ResNeXt, Wide ResNet, RegNet, MobileNetV2/V3, EfficientNet (V1/V2)
and ConvNeXt families.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torchvision.models
from torch import Tensor, nn
from torchvision import ops
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models.convnext import CNBlock, LayerNorm2d

from lightning_mtl.models.weights import IMAGENET_MEAN, IMAGENET_STD, load_checked, read_weights
from lightning_mtl.sparsity.groups import is_channelwise

__all__ = [
    "TORCHVISION_BACKBONES",
    "ImageNormalization",
    "SqueezeExcitation",
    "TorchvisionBackbone",
    "output_strides",
    "torchvision_backbone",
]

_DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
#: name prefix of a family → {output stride: the `get_model` options that give it}, finest first
_FAMILIES: dict[str, dict[int, dict[str, Any]]] = {
    "resnext": {s: {"replace_stride_with_dilation": d} for s, d in _DILATION.items()},
    "wide_resnet": {s: {"replace_stride_with_dilation": d} for s, d in _DILATION.items()},
    "regnet_": {32: {}},
    "mobilenet_v2": {32: {}},
    "mobilenet_v3_": {16: {"dilated": True}, 32: {}},
    "efficientnet_": {32: {}},
    "convnext_": {32: {}},
}
#: the torchvision model names `torchvision_backbone` builds (and `BACKBONES` registers)
TORCHVISION_BACKBONES: tuple[str, ...] = tuple(
    name for name in list_models(module=torchvision.models) if name.startswith(tuple(_FAMILIES))
)
#: children of a torchvision classification network after its convolutional body
_HEAD = ("avgpool", "fc", "classifier")
# side of the dummy input that measures the output channels and stride
_PROBE_SIZE = 64


class ImageNormalization(nn.Module):
    """(x − mean) / std with ImageNet's statistics, for images in [0, 1] (no state-dict keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class TorchvisionBackbone(nn.Sequential):
    """The convolutional body of a torchvision classification network, as a backbone.

    The network's children before its pooling and classifier (`avgpool`, `fc`, `classifier`), in
    order, after an `ImageNormalization` child (`normalize`): images in [0, 1] go in, the last
    feature map comes out. Module names are torchvision's (`layer3.1.conv2`, `features.4.block.0.0`,
    `trunk_output.block2.block2-0.f.b.0`), so torchvision state dicts load (`torchvision_backbone`
    does it before wrapping). Three rewrites keep names and function (`_plain_layers`):
    torchvision.ops' `Conv2dNormActivation` becomes the `nn.Sequential` of its layers and its
    `SqueezeExcitation` an equal `SqueezeExcitation` of this module (torchvision's feature
    extraction does not trace into torchvision.ops modules, and every conv must be a traced node to
    be a LOMT tap); ConvNeXt's channels-last MLP (permute, LayerNorm, Linear, GELU, Linear,
    permute) is computed channels-first (LayerNorm2d, 1×1 conv, GELU, 1×1 conv), so that its
    pointwise layers are convs like every other family's.

    Args:
        model: a torchvision classification network (`get_model(name)`, or its class built
            directly, e.g. a reduced `ConvNeXt` or `EfficientNet` configuration for tests). Its
            modules become the backbone's, rewritten in place.

    Attributes:
        out_channels: channels of the output feature map.
        output_stride: input size / output size.
    """

    def __init__(self, model: nn.Module) -> None:
        children = list(model.named_children())
        body = [(n, m) for n, m in children if n not in _HEAD]
        if not body or children[: len(body)] != body:
            raise ValueError(
                f"{type(model).__name__} is not a torchvision classification network whose "
                f"children end with {list(_HEAD)}: got {[n for n, _ in children]}"
            )
        super().__init__(OrderedDict([("normalize", ImageNormalization()), *body]))
        _plain_layers(self)
        self.out_channels, self.output_stride = self._probe()

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """The grouped convs, named as in torchvision, in forward order: every conv except the
        channel-wise (depthwise) ones, which filter each channel on its own (see
        `sparsity.groups`)."""
        # torchvision registers every block's layers in the order its forward runs them
        return [
            (name, m)
            for name, m in self.named_modules()
            if isinstance(m, nn.Conv2d) and not is_channelwise(m)
        ]

    def _probe(self) -> tuple[int, int]:
        """(channels, stride) of the output, from a no-grad eval-mode forward of a dummy image."""
        param = next(self.parameters())
        x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE, device=param.device, dtype=param.dtype)
        modes = [(m, m.training) for m in self.modules()]
        try:
            self.eval()
            with torch.no_grad():
                out = self(x)
        finally:
            for m, training in modes:
                m.train(training)
        return int(out.shape[1]), _PROBE_SIZE // int(out.shape[-1])


def output_strides(name: str) -> list[int]:
    """The output strides the family of torchvision model `name` can give, finest first."""
    return list(_family(name))


def torchvision_backbone(
    name: str, *, output_stride: int | None = None, weights: str | None = None, **options: Any
) -> TorchvisionBackbone:
    """The `TorchvisionBackbone` of torchvision model `name` (one of `TORCHVISION_BACKBONES`).

    Args:
        name: the torchvision model name (`convnext_tiny`, `mobilenet_v3_large`, …).
        output_stride: one of `output_strides(name)`: 8, 16 or 32 for ResNeXt and Wide ResNet
            (torchvision's `replace_stride_with_dilation`), 16 or 32 for MobileNetV3 (`dilated`),
            32 for the others. Default: the finest.
        weights: `None` (torchvision's random init), `"imagenet"` (the model's default
            torchvision ImageNet weights, read from the torch hub cache, never downloaded), a
            member name of its weights enum (e.g. `"IMAGENET1K_V1"`), or the path of a local
            state-dict file in torchvision's layout (classifier keys are ignored).
        options: more `get_model` keyword arguments (e.g. `width_mult=0.25` for MobileNet).
    """
    strides = _family(name)
    if output_stride is None:
        output_stride = next(iter(strides))
    if output_stride not in strides:
        raise ValueError(
            f"{name} gives output stride {list(strides)}, not {output_stride} (dilation is only "
            "available where torchvision's model offers it)"
        )
    clash = sorted(set(strides[output_stride]) & set(options))
    if clash:
        raise ValueError(f"{clash} are set by output_stride; pass output_stride instead")
    loaded = None if weights is None else read_weights(weights, get_model_weights(name))
    model = get_model(name, weights=None, **strides[output_stride], **options)
    if loaded is not None:
        load_checked(model, *loaded, ignore=_HEAD)
    return TorchvisionBackbone(model)


def _family(name: str) -> dict[int, dict[str, Any]]:
    if name not in TORCHVISION_BACKBONES:
        raise ValueError(
            f"unknown torchvision backbone {name!r}; choose one of {TORCHVISION_BACKBONES}"
        )
    return next(strides for prefix, strides in _FAMILIES.items() if name.startswith(prefix))


class SqueezeExcitation(nn.Module):
    """torchvision.ops' `SqueezeExcitation` with the same layers and function, outside
    torchvision.ops so that torch.fx traces into it: x · σ(fc2(δ(fc1(avgpool(x)))))."""

    def __init__(self, se: ops.SqueezeExcitation) -> None:
        super().__init__()
        self.avgpool, self.fc1, self.fc2 = se.avgpool, se.fc1, se.fc2
        self.activation, self.scale_activation = se.activation, se.scale_activation

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


def _plain_layers(model: nn.Module) -> None:
    """The rewrites of `TorchvisionBackbone`, in place: same names, same function."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ops.Conv2dNormActivation):
                setattr(parent, name, nn.Sequential(OrderedDict(child.named_children())))
            elif isinstance(child, ops.SqueezeExcitation):
                setattr(parent, name, SqueezeExcitation(child))
            elif isinstance(child, CNBlock):
                _channels_first_mlp(child)


def _channels_first_mlp(block: CNBlock) -> None:
    """Rewrite a ConvNeXt block's channels-last MLP channels-first, in place, same names."""
    layers = block.block
    kinds = (nn.Conv2d, ops.Permute, nn.LayerNorm, nn.Linear, nn.GELU, nn.Linear, ops.Permute)
    if len(layers) != len(kinds) or not all(map(isinstance, layers, kinds)):
        raise ValueError(f"unexpected ConvNeXt block layout: {layers}")
    norm = layers[2]
    channels_first = LayerNorm2d(norm.normalized_shape, eps=norm.eps)
    channels_first.load_state_dict(norm.state_dict())
    layers[1], layers[2], layers[6] = nn.Identity(), channels_first, nn.Identity()
    layers[3], layers[5] = _pointwise_conv(layers[3]), _pointwise_conv(layers[5])


def _pointwise_conv(linear: nn.Linear) -> nn.Conv2d:
    """The 1×1 conv computing `linear` on every pixel of a channels-first map."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv.to(linear.weight)
