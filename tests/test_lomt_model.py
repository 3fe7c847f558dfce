"""LOMT stage 2: taps, the truncated backbone, the layer-optimized model and its module."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn

from lightning_mtl import MultiTaskLightningModule
from lightning_mtl.lomt import LayerOptimizedModel, TruncatedBackbone
from lightning_mtl.models import DilatedResNet, build_head
from lightning_mtl.sparsity.compact import compact, macs_and_params
from lightning_mtl.tasks import BinaryClassificationTask, DepthTask, SegmentationTask
from tests.helpers import tiny_backbone, tiny_datamodule, tiny_model, tiny_module, tiny_trainer

TASKS = ("seg", "depth", "sphere")
#: taps at three depths of the tiny ResNet-18 (one block per stage)
TAPS = {"seg": "layer3.0.conv1", "depth": "layer1.0.conv2", "sphere": "layer2.0.conv1"}
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_net(**overrides) -> DilatedResNet:
    return tiny_backbone(**overrides).eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _conv_names(net: nn.Module) -> list[str]:
    return [name for name, _ in net.conv_layers()]


def _fired(net: DilatedResNet, run) -> list[str]:
    """The convs of the original backbone whose forward hooks fire while `run()` runs."""
    fired: list[str] = []
    handles = [
        conv.register_forward_hook(lambda *_, name=name: fired.append(name))
        for name, conv in net.conv_layers()
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return fired


# -- TruncatedBackbone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tap_output", "ran"),
    [
        ("conv", ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]),
        # the rest of the tap's block (conv2, the downsample shortcut) runs, nothing after it
        (
            "block",
            [
                "conv1",
                "layer1.0.conv1",
                "layer1.0.conv2",
                "layer2.0.conv1",
                "layer2.0.conv2",
                "layer2.0.downsample.0",
            ],
        ),
    ],
)
def test_nothing_after_the_deepest_tap_runs(tap_output, ran):
    net = _tiny_net()
    truncated = TruncatedBackbone(net, ["layer1.0.conv2", "layer2.0.conv1"], tap_output)
    # hooks on the original backbone's convs: the truncated backbone shares (not copies) them
    fired = _fired(net, lambda: truncated(_images()))
    assert fired == ran
    assert _conv_names(truncated) == ran, "conv_layers: the kept convs, backbone order and names"
    for name, conv in truncated.conv_layers():
        assert conv is net.get_submodule(name)
    # the layers after the cut are not part of the model at all
    kept = {id(p) for p in truncated.parameters()}
    assert not any(id(p) in kept for p in net.layer3.parameters())
    assert not any(id(p) in kept for p in net.layer4.parameters())
    # sanity check of the hooks: the full backbone fires every conv
    assert _fired(net, lambda: net(_images())) == _conv_names(net)


def test_tap_features_equal_the_full_backbone():
    net = _tiny_net()
    captured = {}
    hooks = [
        net.layer2[0].conv1.register_forward_hook(lambda m, i, o: captured.update(conv=o)),
        net.layer2[0].register_forward_hook(lambda m, i, o: captured.update(block=o)),
        net.conv1.register_forward_hook(lambda m, i, o: captured.update(stem=o.clone())),
    ]
    with torch.no_grad():
        net(_images())
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        conv = TruncatedBackbone(net, ["layer2.0.conv1", "conv1"], "conv")(_images())
        block = TruncatedBackbone(net, ["layer2.0.conv1", "conv1"], "block")(_images())
    assert list(conv) == list(block) == ["layer2.0.conv1", "conv1"]
    torch.testing.assert_close(conv["layer2.0.conv1"], captured["conv"])
    torch.testing.assert_close(block["layer2.0.conv1"], captured["block"])
    # a stem conv is in no residual block: its own output in both modes
    torch.testing.assert_close(conv["conv1"], captured["stem"])
    torch.testing.assert_close(block["conv1"], captured["stem"])


def test_out_channels_follow_the_tap_output():
    net = tiny_backbone("resnet50")  # bottleneck blocks: a block's output has 4x conv1's channels
    taps = ["conv1", "layer2.0.conv1", "layer2.0.conv3", "layer3.0.downsample.0"]
    conv = TruncatedBackbone(net, taps, "conv")
    block = TruncatedBackbone(net, taps, "block")
    assert conv.out_channels == {
        "conv1": 8,
        "layer2.0.conv1": 16,
        "layer2.0.conv3": 64,
        "layer3.0.downsample.0": 128,
    }
    assert block.out_channels == {
        "conv1": 8,
        "layer2.0.conv1": 64,
        "layer2.0.conv3": 64,
        "layer3.0.downsample.0": 128,
    }
    assert net.training, "measuring the channels leaves the mode as it was"
    deep = TruncatedBackbone(_tiny_net(deep_stem=True), ["conv1.3"], "block")
    assert deep.out_channels == {"conv1.3": 4}
    assert _conv_names(deep) == ["conv1.0", "conv1.3"]


def test_truncated_backbone_errors():
    net = _tiny_net()
    with pytest.raises(ValueError, match=r"unknown tap\(s\) \['layer9.0.conv1'\]") as err:
        TruncatedBackbone(net, ["layer1.0.conv1", "layer9.0.conv1"])
    assert str(_conv_names(net)) in str(err.value), "lists the valid conv names"
    with pytest.raises(ValueError, match=r"unknown tap.*layer2\.0"):
        TruncatedBackbone(net, ["layer2.0"])  # a block is not a conv name
    with pytest.raises(ValueError, match="unknown tap_output 'relu'"):
        TruncatedBackbone(net, ["conv1"], "relu")
    with pytest.raises(ValueError, match="at least one tap"):
        TruncatedBackbone(net, [])


# -- LayerOptimizedModel -------------------------------------------------------------------------


def _lomt_model(tap_output: str = "conv") -> LayerOptimizedModel:
    tasks = {
        "seg": SegmentationTask(num_classes=5),
        "depth": DepthTask(),
        "sphere": BinaryClassificationTask("sphere"),
    }
    return tiny_model(tasks, taps=TAPS, tap_output=tap_output).eval()


def test_layer_optimized_model_scripts():
    model = _lomt_model("block")
    scripted = torch.jit.script(model)
    images = _images()
    with torch.no_grad():
        expected, got = model(images), scripted(images)
        partial = scripted(images, ["depth"])
    assert list(got) == list(expected) == list(TAPS)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    assert list(partial) == ["depth"]


def test_layer_optimized_model_copies_pickles_and_compacts(tmp_path):
    model = _lomt_model()
    images = _images()
    with torch.no_grad():
        dict(model.backbone.conv_layers())["layer1.0.conv2"].weight[:, :3] = 0
        expected = model(images)
    copied = copy.deepcopy(model)
    assert not any(m.training for m in copied.modules()), "deepcopy keeps the eval mode"
    torch.save(model, tmp_path / "lomt.pt")
    for other in (copied, torch.load(tmp_path / "lomt.pt", weights_only=False)):
        with torch.no_grad():
            got = other(images)
        for key in TAPS:
            torch.testing.assert_close(got[key], expected[key])
    report = compact(model, images[:1], round_to=None)
    assert report.removed_channels == {"backbone.body.layer1.0.conv2": 3}
    with torch.no_grad():
        got = model(images)
    for key in TAPS:
        torch.testing.assert_close(got[key], expected[key])


def test_layer_optimized_model_errors():
    backbone = TruncatedBackbone(_tiny_net(), ["layer1.0.conv1"])
    head = build_head("dense", 8, 1, 8)
    with pytest.raises(ValueError, match="at least one head"):
        LayerOptimizedModel(backbone, {}, {})
    with pytest.raises(ValueError, match=r"heads without a tap: \['depth'\]"):
        LayerOptimizedModel(backbone, {"depth": head}, {})
    with pytest.raises(ValueError, match="not taps of the backbone"):
        LayerOptimizedModel(backbone, {"depth": head}, {"depth": "layer2.0.conv1"})


# -- MultiTaskLightningModule(taps=...) ----------------------------------------------------------


@pytest.mark.parametrize("tap_output", ["conv", "block"])
def test_module_outputs_and_heads(tap_output):
    data = tiny_datamodule(TASKS)
    module = tiny_module(data, TASKS, taps=TAPS, tap_output=tap_output)
    conventional = tiny_module(data, TASKS)
    assert isinstance(module.model, LayerOptimizedModel)
    images = _images(3)
    with torch.no_grad():
        out = module.eval()(images)
        ref = conventional.eval()(images)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in ref.items()}
    assert out["seg"].shape[-2:] == out["depth"].shape[-2:] == (32, 32)
    assert out["sphere"].shape == (3,)
    backbone = module.model.backbone
    assert (
        module.model.heads["seg"][0].convs[0][0].in_channels == backbone.out_channels[TAPS["seg"]]
    )
    assert (
        module.model.heads["sphere"].features[0].in_channels
        == (backbone.out_channels[TAPS["sphere"]])
    )
    # the grouped convs are the kept ones: nothing of layer3.0 after its conv1, no layer4
    assert module.sparse_names == _conv_names(backbone)
    assert module.sparse_names[-1] == (
        "layer3.0.conv1" if tap_output == "conv" else "layer3.0.downsample.0"
    )
    assert [n for n, _ in module.sparse_weights()] == module.sparse_names
    # trains: gradients reach every parameter (no unused one, as DDP wants)
    sum(p.float().mean() for p in module.train()(images).values()).backward()
    assert all(p.grad is not None for p in module.model.parameters())


def test_module_heads_follow_the_tap_channels():
    tasks = ("seg", "sphere")
    taps = {"seg": "layer2.0.conv1", "sphere": "layer2.0.conv1"}  # two tasks may share a tap
    data = tiny_datamodule(tasks)

    def head_inputs(tap_output):
        module = tiny_module(data, tasks, backbone="resnet50", taps=taps, tap_output=tap_output)
        heads = module.model.heads
        return heads["seg"][0].convs[0][0].in_channels, heads["sphere"].features[0].in_channels

    assert head_inputs("conv") == (16, 16)
    assert head_inputs("block") == (64, 64)  # bottleneck: 4x the block's conv1


def test_lomt_macs_below_the_conventional_model():
    data = tiny_datamodule(TASKS)
    early = {"seg": "layer2.0.conv1", "depth": "layer1.0.conv2", "sphere": "layer1.0.conv1"}
    lomt = tiny_module(data, TASKS, taps=early)
    conventional = tiny_module(data, TASKS)
    example = _images(1)
    macs, params = macs_and_params(lomt.model, example)
    ref_macs, ref_params = macs_and_params(conventional.model, example)
    assert macs < ref_macs
    assert params < ref_params


def test_module_tap_errors():
    data = tiny_datamodule(TASKS)
    with pytest.raises(ValueError, match=r"tasks without a tap: \['depth', 'sphere'\]") as err:
        tiny_module(data, TASKS, taps={"seg": "layer1.0.conv1"})
    assert "taps given for: ['seg']" in str(err.value)
    with pytest.raises(ValueError, match=r"not trained \['edge'\]"):
        tiny_module(data, TASKS, taps={**TAPS, "edge": "conv1"})
    with pytest.raises(
        ValueError, match=r"unknown tap\(s\) \['layer4.0.conv9'\]; the backbone's convs are"
    ):
        tiny_module(data, TASKS, taps={**TAPS, "seg": "layer4.0.conv9"})
    with pytest.raises(ValueError, match="unknown tap_output"):
        tiny_module(data, TASKS, taps=TAPS, tap_output="relu")
    # sparse_layers selects among the kept convs only
    with pytest.raises(ValueError, match="matches no conv layer"):
        tiny_module(data, TASKS, taps=TAPS, sparse_layers="layer4")
    module = tiny_module(data, TASKS, taps=TAPS, sparse_layers=r"layer[12]")
    assert all(n.startswith(("layer1", "layer2")) for n in module.sparse_names)


def test_state_dict_keys_are_the_backbone_s():
    """The kept backbone keeps the full backbone's parameter names (under `backbone.body.`)."""
    data = tiny_datamodule(TASKS)
    lomt = tiny_module(data, TASKS, taps=TAPS)
    full = tiny_module(data, TASKS).model.backbone.state_dict()
    prefix = "model.backbone.body."
    keys = [k.removeprefix(prefix) for k in lomt.state_dict() if k.startswith(prefix)]
    assert keys and set(keys) < set(full)
    assert not any(k.startswith(("layer4", "layer3.0.bn1")) for k in keys)


def test_fit_and_checkpoint_round_trip(tmp_path):
    L.seed_everything(0)
    data = tiny_datamodule(TASKS)
    module = tiny_module(data, TASKS, taps=TAPS, tap_output="block", weighting="uncertainty")
    trainer = tiny_trainer(tmp_path, enable_checkpointing=False, limit_val_batches=1)
    trainer.fit(module, data)
    assert trainer.global_step == 4
    path = tmp_path / "lomt.ckpt"
    trainer.save_checkpoint(path)

    loaded = MultiTaskLightningModule.load_from_checkpoint(path)
    assert loaded.hparams.taps == TAPS and loaded.hparams.tap_output == "block"
    assert isinstance(loaded.model, LayerOptimizedModel)
    assert loaded.sparse_names == module.sparse_names
    for name, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    images = _images()
    with torch.no_grad():
        expected, got = module.eval()(images), loaded.eval()(images)
    for key in TASKS:
        torch.testing.assert_close(got[key], expected[key])
