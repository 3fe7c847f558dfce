"""Torchvision classification networks as backbones: names, the same function as torchvision,
grouped convs in forward order, output strides, offline weights, LOMT taps, and for a tiny model
of each family one prox training step, then exact compaction and TorchScript export.

Tolerance: compacted outputs equal the sparse model's within 1e-5 of the output's scale
(max |y|), float32 on CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ConvNeXt, EfficientNet, RegNet, ResNet, get_model
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.efficientnet import MBConvConfig
from torchvision.models.regnet import BlockParams
from torchvision.models.resnet import Bottleneck

from lightning_mtl import MultiTaskLightningModule, TargetSpec
from lightning_mtl.lomt import TruncatedBackbone
from lightning_mtl.lomt.model import BLOCKS
from lightning_mtl.models import ClassificationHead, DeepLabV3Head, MultiTaskModel
from lightning_mtl.models.backbone import build_backbone, list_backbones
from lightning_mtl.models.torchvision_backbone import (
    TorchvisionBackbone,
    output_strides,
    torchvision_backbone,
)
from lightning_mtl.sparsity import ProxAdamW, conv_weights, sparsity_stats
from lightning_mtl.sparsity.compact import compact, export_torchscript
from lightning_mtl.sparsity.groups import group_size, group_sum, is_channelwise

RTOL = 1e-5
LR = 1e-3
#: family → (a tiny torchvision network of it, image side); ResNeXt at output stride 8
TINY: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "convnext": (
        lambda: ConvNeXt(
            [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
        ),
        64,
    ),
    "mobilenet_v3": (lambda: get_model("mobilenet_v3_small", width_mult=0.25, dilated=True), 64),
    "efficientnet": (
        lambda: EfficientNet(
            [
                MBConvConfig(1, 3, 1, 8, 8, 1),
                MBConvConfig(4, 3, 2, 8, 16, 1),
                MBConvConfig(4, 5, 2, 16, 24, 1),
                MBConvConfig(4, 3, 2, 24, 32, 1),
            ],
            dropout=0.0,
            last_channel=48,
        ),
        64,
    ),
    "regnet": (
        lambda: RegNet(
            BlockParams([1, 1, 1], [8, 16, 32], [4, 4, 8], [1.0] * 3, [2] * 3, se_ratio=0.25),
            stem_width=8,
        ),
        64,
    ),
    "resnext": (
        lambda: ResNet(
            Bottleneck,
            [1, 1, 1, 1],
            groups=4,
            width_per_group=4,
            replace_stride_with_dilation=[False, True, True],
        ),
        32,
    ),
}
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(family: str) -> tuple[TorchvisionBackbone, Tensor]:
    make, side = TINY[family]
    torch.manual_seed(0)
    images = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    return TorchvisionBackbone(make()), images


def _assert_same(expected: dict[str, Tensor], actual: dict[str, Tensor]) -> None:
    assert list(expected) == list(actual)
    for key, e in expected.items():
        assert actual[key].shape == e.shape, key
        atol = RTOL * float(e.abs().max())
        torch.testing.assert_close(actual[key], e, rtol=0, atol=atol, msg=key)


def test_the_families_are_registered_by_name():
    names = list_backbones()
    for name in (
        "convnext_tiny",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "efficientnet_v2_s",
        "regnet_y_800mf",
        "resnext50_32x4d",
        "wide_resnet50_2",
    ):
        assert name in names
    assert names[:5] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    with pytest.raises(
        ValueError, match=r"unknown backbone 'vgg16'; choose one of .*convnext_tiny"
    ):
        build_backbone("vgg16")


@pytest.mark.parametrize("family", TINY)
def test_same_function_as_torchvision(family):
    make, side = TINY[family]
    torch.manual_seed(0)
    reference = make().eval()
    backbone = TorchvisionBackbone(copy.deepcopy(reference)).eval()
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        y = backbone.normalize(x)
        for name, child in reference.named_children():
            if name not in ("avgpool", "fc", "classifier"):
                y = child(y)
        out = backbone(x)
    torch.testing.assert_close(out, y, rtol=0, atol=1e-5)
    assert out.shape[1] == backbone.out_channels
    assert side // out.shape[-1] == backbone.output_stride
    assert not any(k.startswith(("fc.", "classifier.")) for k in backbone.state_dict())


@pytest.mark.parametrize("family", TINY)
def test_conv_layers_are_the_channel_mixing_convs_in_forward_order(family):
    backbone, images = _tiny(family)
    convs = backbone.conv_layers()
    every = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    assert [n for n, _ in convs] == [n for n, m in every if not is_channelwise(m)]
    depthwise = family in ("convnext", "mobilenet_v3", "efficientnet")
    assert (len(convs) < len(every)) == depthwise, "only the depthwise convs are not grouped"
    executed: list[str] = []
    for name, conv in convs:
        conv.register_forward_hook(lambda *_, name=name: executed.append(name))
    backbone(images)
    assert executed == [n for n, _ in convs]


def test_a_grouped_conv_group_is_one_channel_per_conv_group():
    backbone, _ = _tiny("resnext")
    conv = backbone.layer1[0].conv2  # 16 input channels in 4 conv groups of 4
    assert (conv.groups, conv.in_channels) == (4, 16)
    w = conv.weight.detach()
    # W[:, j] reads input channel j of every conv group: p_g = O·kh·kw, I/g groups
    assert group_size(w, "in_channel") == conv.out_channels * 9
    norms = group_sum(w.square(), "in_channel").flatten()
    assert norms.shape == (4,)
    torch.testing.assert_close(norms[1], w[:, 1].square().sum())


def test_output_strides():
    assert output_strides("resnext50_32x4d") == [8, 16, 32]
    assert output_strides("wide_resnet50_2") == [8, 16, 32]
    assert output_strides("mobilenet_v3_large") == [16, 32]
    assert output_strides("convnext_tiny") == output_strides("efficientnet_b0") == [32]
    x = torch.rand(1, 3, 64, 64)
    for stride in (16, 32):
        net = build_backbone("mobilenet_v3_small", width_mult=0.25, output_stride=stride)
        assert net.output_stride == stride
        assert net(x).shape[-1] == 64 // stride
    resnext = build_backbone("resnext50_32x4d", output_stride=16)
    assert resnext.output_stride == 16
    assert resnext.layer4[0].conv2.stride == (1, 1)
    assert resnext.layer4[1].conv2.dilation == (2, 2)
    with pytest.raises(ValueError, match=r"convnext_tiny gives output stride \[32\], not 8"):
        build_backbone("convnext_tiny", output_stride=8)
    with pytest.raises(ValueError, match="set by output_stride"):
        build_backbone("resnext50_32x4d", replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ValueError, match="unknown torchvision backbone 'vgg16'"):
        torchvision_backbone("vgg16")


@pytest.mark.parametrize("weights", ["imagenet", "IMAGENET1K_V1"])
def test_imagenet_weights_from_the_cache(hub_dir: Path, weights: str):
    reference = get_model("mobilenet_v3_small")
    (hub_dir / "checkpoints").mkdir()
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / "mobilenet_v3_small-047dcff4.pth")
    backbone = torchvision_backbone("mobilenet_v3_small", output_stride=32, weights=weights)
    expected = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    assert backbone.state_dict().keys() == expected.keys()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with pytest.raises(ValueError, match="do not fit this backbone; shape mismatches: features"):
        torchvision_backbone("mobilenet_v3_small", weights=weights, width_mult=0.5)


def test_imagenet_weights_missing_file(hub_dir: Path):
    with pytest.raises(FileNotFoundError) as err:
        torchvision_backbone("convnext_tiny", weights="imagenet")
    message = str(err.value)
    assert "convnext_tiny-983f1562.pth" in message
    assert str(hub_dir / "checkpoints") in message
    assert "never downloaded" in message
    with pytest.raises(FileNotFoundError, match="'imagenet', one of"):
        torchvision_backbone("convnext_tiny", weights=str(hub_dir / "absent.pth"))


@pytest.mark.parametrize("family", ["efficientnet", "regnet"])
def test_lomt_taps_read_the_convs_and_blocks(family):
    backbone, images = _tiny(family)
    backbone.eval()
    names = [n for n, _ in backbone.conv_layers()]
    conv_tap, block_tap = names[len(names) // 3], names[len(names) // 2]
    block = next(
        m for m in backbone.modules() if isinstance(m, BLOCKS) and block_tap in _names(m, backbone)
    )
    seen: dict[str, Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, key=key: seen.update({key: o.clone()}))
        for key, module in ((conv_tap, backbone.get_submodule(conv_tap)), (block_tap, block))
    ]
    with torch.no_grad():
        backbone(images)
        for hook in hooks:
            hook.remove()
        out = {
            conv_tap: TruncatedBackbone(backbone, [conv_tap])(images)[conv_tap],
            block_tap: TruncatedBackbone(backbone, [block_tap], "block")(images)[block_tap],
        }
    _assert_same(seen, out)
    kept = [n for n, _ in TruncatedBackbone(backbone, [conv_tap]).conv_layers()]
    assert kept[-1] == conv_tap and set(kept) <= set(names[: names.index(conv_tap) + 1])


def _names(module: nn.Module, root: nn.Module) -> set[str]:
    """The names in `root` of `module`'s submodules."""
    inside = {id(m) for m in module.modules()}
    return {n for n, m in root.named_modules() if id(m) in inside}


def test_the_module_groups_the_torchvision_convs():
    targets = {"seg": TargetSpec("seg", num_classes=3)}
    module = MultiTaskLightningModule(
        ["seg"],
        targets,
        backbone="mobilenet_v3_small",
        backbone_options={"width_mult": 0.25},
        head_channels=8,
    )
    backbone = module.model.backbone
    assert module.sparse_names == [n for n, _ in backbone.conv_layers()]
    groups = {g["name"]: g for g in module.optimizer_param_groups()}
    depthwise = [
        m.weight for m in backbone.modules() if isinstance(m, nn.Conv2d) and is_channelwise(m)
    ]
    assert depthwise and all(
        any(p is w for p in groups["backbone"]["params"]) for w in depthwise
    ), "depthwise weights are trained without the prox"


def _half_dying_lambda(weights: list[Tensor]) -> float:
    """The λ whose euclidean prox, after one step of LR, zeroes about half of the groups."""
    ratios = [
        group_sum(w.detach().square(), "in_channel").sqrt().flatten()
        / math.sqrt(group_size(w, "in_channel"))
        for w in weights
    ]
    return float(torch.cat(ratios).median()) / LR


@pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", TINY)
def test_a_prox_step_then_exact_compaction_and_export(family, tmp_path):
    backbone, images = _tiny(family)
    heads = {
        "seg": DeepLabV3Head(backbone.out_channels, 3, channels=8, atrous_rates=(1, 2, 3)),
        "male": ClassificationHead(backbone.out_channels, 1, hidden=8),
    }
    model = MultiTaskModel(backbone, heads)
    sparse = [w for _, w in conv_weights(model)]
    ids = {id(w) for w in sparse}
    optimizer = ProxAdamW(
        [
            {"params": sparse, "lambda_": _half_dying_lambda(sparse)},
            {"params": [p for p in model.parameters() if id(p) not in ids]},
        ],
        lr=LR,
        prox_metric="euclidean",
    )
    seg = torch.randint(0, 3, (2, *images.shape[-2:]), generator=torch.Generator().manual_seed(2))
    preds = model(images)
    loss = F.cross_entropy(preds["seg"], seg)
    loss = loss + F.binary_cross_entropy_with_logits(preds["male"], torch.tensor([0.0, 1.0]))
    loss.backward()
    optimizer.step()
    stats = sparsity_stats(model)
    assert 10 < stats.group_pct < 90, "about half of the groups die"

    model.eval()
    with torch.no_grad():
        expected = model(images)
    report = compact(model, images[:1])
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    with torch.no_grad():
        _assert_same(expected, model(images))
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        assert conv.in_channels % conv.groups == conv.out_channels % conv.groups == 0
    export_torchscript(model, tmp_path / "model.ts", images[:1])
    with torch.no_grad():
        _assert_same(expected, torch.jit.load(tmp_path / "model.ts")(images))
