"""Dilated ResNet backbones built from torchvision's residual blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
)
from torchvision.models._api import WeightsEnum
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3

from lightning_mtl.models.torchvision_backbone import TORCHVISION_BACKBONES, torchvision_backbone
from lightning_mtl.models.weights import IMAGENET_MEAN, IMAGENET_STD, load_checked, read_weights
from lightning_mtl.registry import Registry

__all__ = ["BACKBONES", "DilatedResNet", "build_backbone", "list_backbones"]

# depth -> (block, blocks per stage, torchvision ImageNet weights)
_ARCHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, ...], type[WeightsEnum]]] = {
    18: (BasicBlock, (2, 2, 2, 2), ResNet18_Weights),
    34: (BasicBlock, (3, 4, 6, 3), ResNet34_Weights),
    50: (Bottleneck, (3, 4, 6, 3), ResNet50_Weights),
    101: (Bottleneck, (3, 4, 23, 3), ResNet101_Weights),
    152: (Bottleneck, (3, 8, 36, 3), ResNet152_Weights),
}
# output stride -> torchvision's `replace_stride_with_dilation` for layer2..layer4
_DILATE: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),
    16: (False, False, True),
    32: (False, False, False),
}


class DilatedResNet(nn.Module):
    """ResNet-18/34/50/101/152 feature extractor with dilated last stages (torchvision layout).

    Module names match torchvision's `ResNet` (`conv1`, `bn1`, `layer1`..`layer4`; no `avgpool`
    or `fc`), so torchvision state dicts load. The input is an image batch in [0, 1]; the
    backbone applies the ImageNet normalisation itself, so exported models are self-contained.

    Args:
        depth: 18, 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
        output_stride: 8 (layer3/layer4 dilated 2/4), 16 (layer4 dilated 2) or 32 (no dilation).
        deep_stem: ResNet-D stem: `conv1` is three 3×3 convs (3→w/2 stride 2, w/2→w/2, w/2→w).
        width: channels of the stem and first stage; stage planes are width·(1, 2, 4, 8).
        layers: blocks per stage, overriding the depth's default (e.g. `[1, 1, 1, 1]` for tests).
        weights: `None` (torchvision's random init), `"imagenet"` (the depth's default
            torchvision ImageNet weights, read from the torch hub cache, never downloaded), a
            member name of the torchvision weights enum (e.g. `"IMAGENET1K_V1"`), or the path of a
            local state-dict file (`fc.*` keys are ignored).
    """

    def __init__(
        self,
        depth: int = 50,
        output_stride: int = 8,
        deep_stem: bool = False,
        width: int = 64,
        layers: Sequence[int] | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if depth not in _ARCHS:
            raise ValueError(f"depth must be one of {sorted(_ARCHS)}, got {depth}")
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be one of {sorted(_DILATE)}, got {output_stride}")
        block, default_layers, weights_enum = _ARCHS[depth]
        layers = default_layers if layers is None else tuple(layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {list(layers)}")
        if width < 2 or width % 2:
            raise ValueError(f"width must be a positive even number, got {width}")

        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.conv1 = (
            _deep_stem(width)
            if deep_stem
            else nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stages.append(_make_stage(block, inplanes, planes, blocks, stride=1 if i == 0 else 2))
            inplanes = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = inplanes

        dilation = 1
        for stage, dilate in zip(stages[1:], _DILATE[output_stride], strict=True):
            if dilate:
                _dilate(stage, first=dilation, rest=2 * dilation)
                dilation *= 2

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        if weights is None:
            return
        standard = not deep_stem and width == 64 and layers == default_layers
        if (weights == "imagenet" or weights in weights_enum.__members__) and not standard:
            raise ValueError(
                "torchvision has ImageNet weights only for the standard ResNet-"
                f"{depth} (deep_stem=False, width=64, layers={list(default_layers)}); got "
                f"deep_stem={deep_stem}, width={width}, layers={list(layers)}"
            )
        # torchvision's classifier (`fc.*`) is not part of the backbone
        load_checked(self, *read_weights(weights, weights_enum), ignore=("fc",))

    def forward(self, x: Tensor) -> Tensor:
        """Final feature map [N, out_channels, H/s, W/s] of images [N, 3, H, W] in [0, 1]."""
        x = (x - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """Every conv, named relative to the backbone (`layer3.3.conv1`), in forward order."""
        # registration order is execution order: stem, then per block conv1..3 before downsample
        return [(name, m) for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]


def _make_stage(
    block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """One ResNet stage, as torchvision's `ResNet._make_layer` without dilation."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    return nn.Sequential(
        block(inplanes, planes, stride, downsample),
        *(block(out, planes) for _ in range(blocks - 1)),
    )


def _dilate(stage: nn.Sequential, first: int, rest: int) -> None:
    """Trade a stage's stride 2 for dilation as torchvision's `replace_stride_with_dilation`.

    Blocks are built undilated (torchvision's BasicBlock refuses dilation > 1); this removes every
    stride and gives the 3×3 convs of the first block dilation `first`, of the others `rest`.
    """
    for i, block in enumerate(stage):
        d = first if i == 0 else rest
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
                if m.kernel_size != (1, 1):
                    m.dilation = m.padding = (d, d)


def _deep_stem(width: int) -> nn.Sequential:
    """ResNet-D stem: three 3×3 convs (the first with stride 2) in place of the 7×7 conv."""
    mid = width // 2
    return nn.Sequential(
        conv3x3(3, mid, stride=2),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        conv3x3(mid, mid),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        conv3x3(mid, width),
    )


#: backbones by name; an entry builds the backbone from keyword options. A backbone exposes
#: `out_channels` and `conv_layers()` (its grouped convs, named and in forward order).
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
for _depth in _ARCHS:
    BACKBONES.register(f"resnet{_depth}", partial(DilatedResNet, _depth))
for _name in TORCHVISION_BACKBONES:
    BACKBONES.register(_name, partial(torchvision_backbone, _name))


def list_backbones() -> list[str]:
    """The registered backbones."""
    return BACKBONES.names()


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A backbone by registered name (`resnet18|34|50|101|152`: a `DilatedResNet`; torchvision
    model names such as `convnext_tiny`: a `TorchvisionBackbone`); `kwargs` go to its factory."""
    return BACKBONES.get(name)(**kwargs)
