"""Backbone, heads and the multi-task model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from lightning_mtl.models import (
    ClassificationHead,
    DeepLabV3Head,
    DilatedResNet,
    MultiTaskModel,
    build_backbone,
    build_head,
)
from lightning_mtl.models.backbone import IMAGENET_MEAN, IMAGENET_STD
from lightning_mtl.tasks import BinaryClassificationTask, DepthTask, SegmentationTask
from tests.helpers import TINY_BACKBONE, tiny_backbone, tiny_model


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode comparisons mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def _torchvision_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision ResNet up to layer4 on ImageNet-normalised images."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = model.maxpool(model.relu(model.bn1(model.conv1((x - mean) / std))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_dilated_resnet50_equals_torchvision(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    _randomize_bn(reference)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)  # fc.* included, as in torchvision files
    model = DilatedResNet(depth=50, output_stride=8, weights=str(path)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, _torchvision_features(reference, x))
    assert out.shape == (1, 2048, 8, 8)


@pytest.mark.parametrize(("depth", "output_stride"), [(50, 16), (101, 8), (18, 32), (34, 32)])
def test_conv_geometry_matches_torchvision(depth: int, output_stride: int) -> None:
    build = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}[depth]
    dilate = {8: [False, True, True], 16: [False, False, True], 32: None}[output_stride]
    reference = build(replace_stride_with_dilation=dilate)
    ours = DilatedResNet(depth=depth, output_stride=output_stride)
    expected = [(n, c.stride, c.dilation, c.padding) for n, c in _convs(reference)]
    assert [(n, c.stride, c.dilation, c.padding) for n, c in ours.conv_layers()] == expected


def test_basic_block_dilation_and_output_stride() -> None:
    x = torch.rand(1, 3, 64, 64)
    for output_stride in (8, 16, 32):
        model = tiny_backbone(output_stride=output_stride)
        assert model(x).shape == (1, 64, 64 // output_stride, 64 // output_stride)
    dilated = dict(tiny_backbone(output_stride=8, layers=[1, 1, 1, 2]).conv_layers())
    assert dilated["layer3.0.conv1"].dilation == (1, 1)
    assert dilated["layer4.0.conv1"].dilation == (2, 2)
    assert dilated["layer4.1.conv2"].dilation == (4, 4)


def test_resnet50_conv_layers() -> None:
    names = [name for name, _ in DilatedResNet(depth=50).conv_layers()]
    assert len(names) == 53
    assert names[:5] == [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.0.conv3",
        "layer1.0.downsample.0",
    ]
    assert "layer3.3.conv1" in names
    assert names[-1] == "layer4.2.conv3"


@pytest.mark.parametrize(
    ("name", "options"),
    [("resnet18", {}), ("resnet50", {}), ("resnet50", {"deep_stem": True})],
    ids=["resnet18", "resnet50", "resnet50-deep-stem"],
)
def test_conv_layers_in_forward_order(name: str, options: dict) -> None:
    model = tiny_backbone(name, **options, layers=[2, 1, 1, 1])
    executed: list[str] = []
    for name, conv in model.conv_layers():
        conv.register_forward_hook(lambda *_, name=name: executed.append(name))
    model(torch.rand(1, 3, 32, 32))
    assert executed == [name for name, _ in model.conv_layers()]
    assert len(executed) == len(_convs(model))


def test_deep_stem() -> None:
    model = tiny_backbone(deep_stem=True)
    stem = [(n, c.in_channels, c.out_channels, c.stride) for n, c in model.conv_layers()[:3]]
    assert stem == [("conv1.0", 3, 4, (2, 2)), ("conv1.3", 4, 4, (1, 1)), ("conv1.6", 4, 8, (1, 1))]
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 64, 4, 4)


def test_width_and_out_channels() -> None:
    assert tiny_backbone("resnet18").out_channels == 64
    assert tiny_backbone("resnet50").out_channels == 256
    assert tiny_backbone("resnet50", width=16).layer2[0].conv1.in_channels == 64


def test_normalisation_buffers_not_in_state_dict() -> None:
    model = tiny_backbone()
    assert "mean" not in model.state_dict()
    assert "fc.weight" not in model.state_dict()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[18, 34, 50, 101, 152\]"):
        DilatedResNet(depth=200)
    with pytest.raises(ValueError, match=r"\[8, 16, 32\]"):
        DilatedResNet(output_stride=4)
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("vgg16")
    assert build_backbone("resnet18", **TINY_BACKBONE).out_channels == 64


@pytest.mark.parametrize("weights", ["imagenet", "IMAGENET1K_V1"])
def test_imagenet_weights_from_cache(hub_dir: Path, weights: str) -> None:
    reference = resnet18()
    (hub_dir / "checkpoints").mkdir()
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / "resnet18-f37072fd.pth")
    model = DilatedResNet(depth=18, weights=weights)
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert model.state_dict().keys() == expected.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_imagenet_weights_missing_file(hub_dir: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        DilatedResNet(depth=50, weights="imagenet")
    message = str(err.value)
    assert "resnet50-11ad3fa6.pth" in message  # ResNet50_Weights.DEFAULT (IMAGENET1K_V2)
    assert str(hub_dir / "checkpoints") in message
    assert "local" in message


def test_imagenet_weights_need_standard_architecture() -> None:
    with pytest.raises(ValueError, match="deep_stem=True"):
        DilatedResNet(depth=18, deep_stem=True, weights="imagenet")
    with pytest.raises(ValueError, match="width=32"):
        DilatedResNet(depth=18, width=32, weights="imagenet")


def test_local_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="imagenet"):
        DilatedResNet(depth=18, weights=str(tmp_path / "absent.pth"))
    state = tiny_backbone(width=16).state_dict()
    del state["layer4.0.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "state.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="do not fit") as err:
        tiny_backbone(weights=str(path))
    message = str(err.value)
    assert "missing keys: layer4.0.bn2.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "conv1.weight (16, 3, 7, 7) (expected (8, 3, 7, 7))" in message


def test_deeplabv3_head_is_torchvision_deeplab_head() -> None:
    torch.manual_seed(0)
    reference = DeepLabHead(16, 5).eval()
    _randomize_bn(reference)
    head = DeepLabV3Head(16, 5).eval()
    head.load_state_dict(reference.state_dict())
    x = torch.rand(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(head(x), reference(x))
    assert DeepLabV3Head(16, 3, channels=8, atrous_rates=(1, 2))(x).shape == (2, 3, 8, 8)


def test_classification_head_shapes() -> None:
    x = torch.rand(2, 16, 5, 5)
    assert ClassificationHead(16)(x).shape == (2,)
    assert ClassificationHead(16, out_channels=3)(x).shape == (2, 3)
    assert ClassificationHead(16)(torch.rand(2, 16, 1, 1)).shape == (2,)


def test_build_head() -> None:
    assert isinstance(build_head("dense", 16, 4, channels=8), DeepLabV3Head)
    assert isinstance(build_head("classification", 16, 1), ClassificationHead)
    with pytest.raises(ValueError, match="classification"):
        build_head("pixel", 16, 1)


def _tiny_model() -> MultiTaskModel:
    tasks = {
        "seg": SegmentationTask(num_classes=4),
        "depth": DepthTask(),
        "male": BinaryClassificationTask("male"),
    }
    return tiny_model(tasks)


def test_multitask_runs_backbone_once_and_upsamples() -> None:
    model = _tiny_model()
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    out = model(torch.rand(2, 3, 40, 48))
    assert len(calls) == 1
    assert out["seg"].shape == (2, 4, 40, 48)
    assert out["depth"].shape == (2, 1, 40, 48)
    assert out["male"].shape == (2,)
    sum(o.sum() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_multitask_model_scripts() -> None:
    model = _tiny_model().eval()
    x = torch.rand(1, 3, 32, 32)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        expected, got = model(x), scripted(x)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_multitask_needs_heads() -> None:
    with pytest.raises(ValueError, match="head"):
        MultiTaskModel(tiny_backbone(), {})
