"""Compaction removes exactly the dead channels of sparse models (rounded widths keep the fewest
dead ones); saved, loaded and exported copies agree; a file whose plan and weights disagree is
refused.

Tolerance: compacted outputs equal the sparse model's within 1e-5 of the output's scale (max |y|),
float32 on CPU; only the summation order of the convs changes. A loaded file's outputs equal the
compacted model's bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from lightning_mtl.benchmarks.compaction import benchmark_compaction, zero_random_groups
from lightning_mtl.models import ClassificationHead, DeepLabV3Head, MultiTaskModel
from lightning_mtl.reporting.figures import latency_plot, save_figure
from lightning_mtl.sparsity import live_groups
from lightning_mtl.sparsity.compact import compact, export_onnx, export_torchscript
from tests.helpers import tiny_backbone

RTOL = 1e-5
IMAGES = 32


def _model(depth: int = 18, **backbone_options) -> MultiTaskModel:
    backbone = tiny_backbone(f"resnet{depth}", layers=[1, 1, 1, 2], **backbone_options)
    heads = {
        "seg": DeepLabV3Head(backbone.out_channels, 5, channels=8, atrous_rates=(2, 4, 6)),
        "attr": ClassificationHead(backbone.out_channels, 3, hidden=8),
    }
    return MultiTaskModel(backbone, heads)


@torch.no_grad()
def _sparsify(model: nn.Module, seed: int) -> None:
    """Zero 30–70 % of the input groups of ~80 % of the convs (backbone and heads, not the RGB
    stem), set random BN statistics, eval mode."""
    g = torch.Generator().manual_seed(seed)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 3]
    for conv in convs:
        if torch.rand(1, generator=g) < 0.8:
            fraction = 0.3 + 0.4 * float(torch.rand(1, generator=g))
            zero_random_groups(conv, fraction, g)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.5, generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.normal_(0, 0.5, generator=g)
    model.eval()


def _assert_same(expected: dict[str, Tensor] | Tensor, actual: dict[str, Tensor] | Tensor) -> None:
    if isinstance(expected, Tensor):
        expected, actual = {"": expected}, {"": actual}
    assert list(expected) == list(actual)
    for key, e in expected.items():
        a = actual[key]
        assert a.shape == e.shape, key
        torch.testing.assert_close(a, e, rtol=0, atol=RTOL * float(e.abs().max()), msg=key)


def _images(batch: int = 2) -> Tensor:
    return torch.rand(batch, 3, IMAGES, IMAGES, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_compaction_is_exact_and_removes_the_implied_channels(depth):
    torch.manual_seed(depth)
    model = _model(depth)
    _sparsify(model, seed=depth)
    project = model.heads["seg"][0].project[0]  # reads the concat of the 5 ASPP branches
    zero_random_groups(project, 0.5, torch.Generator().manual_seed(depth))
    x = _images()
    with torch.no_grad():
        expected = model(x)
    # inputs of conv2/conv3 come from the same block only: not coupled to any other reader
    private = {
        n: max(1, int(live_groups(m.weight, "in_channel").sum()))
        for n, m in model.backbone.conv_layers()
        if n.endswith(("conv2", "conv3"))
    }
    report = compact(model, x[:1], round_to=None)
    with torch.no_grad():
        _assert_same(expected, model(x))
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    assert not model.training
    convs = dict(model.backbone.conv_layers())
    assert {n: convs[n].in_channels for n in private} == private
    assert project.in_channels < 5 * 8, "zero groups of the ASPP concat are removed too"
    assert "->" in report.summary


def test_residual_stream_channels_go_only_when_every_reader_has_them_zero():
    model = _model(50)
    _sparsify(model, seed=0)
    blocks = model.backbone.layer4
    stream = blocks[0].conv3.out_channels
    with torch.no_grad():
        blocks[1].conv1.weight[:, :6] = 0  # one reader of the stream; the heads still read it
    compact(model, round_to=None)
    assert blocks[0].conv3.out_channels == blocks[1].conv3.out_channels == stream
    # the layer1 stream is read by layer2.0.conv1 and layer2.0.downsample only
    model = _model(50)
    _sparsify(model, seed=0)
    layer2 = model.backbone.layer2[0]
    with torch.no_grad():
        layer2.conv1.weight[:, :4] = 0
        layer2.downsample[0].weight[:, 2:6] = 0
        expected = model(_images())
    dead = ~live_groups(layer2.conv1.weight, "in_channel")
    dead &= ~live_groups(layer2.downsample[0].weight, "in_channel")
    report = compact(model, round_to=None)
    assert report.removed_channels["backbone.layer2.0.conv1"] == int(dead.sum()) >= 2
    assert report.removed_channels["backbone.layer2.0.downsample.0"] == int(dead.sum())
    assert model.backbone.layer1[0].conv3.out_channels == layer2.conv1.in_channels
    with torch.no_grad():
        _assert_same(expected, model(_images()))


def test_bare_backbone_keeps_its_output_channels():
    backbone = tiny_backbone("resnet50", layers=[1, 1, 1, 2])
    _sparsify(backbone, seed=3)
    with torch.no_grad():
        backbone.layer4[1].conv1.weight.zero_()  # the only conv reading the output stream
    x = _images()
    with torch.no_grad():
        expected = backbone(x)
    compact(backbone)
    assert backbone.layer4[1].conv3.out_channels == backbone.out_channels
    assert backbone.layer4[1].conv1.in_channels == backbone.out_channels
    with torch.no_grad():
        _assert_same(expected, backbone(x))


def test_a_fully_zero_layer_input_keeps_one_channel():
    model = _model(18).eval()
    block = model.backbone.layer2[0]
    with torch.no_grad():
        block.conv2.weight.zero_()
        expected = model(_images())
    report = compact(model, round_to=None)
    assert block.conv2.in_channels == block.conv1.out_channels == block.bn1.num_features == 1
    assert report.removed_channels == {"backbone.layer2.0.conv2": 15}
    with torch.no_grad():
        _assert_same(expected, model(_images()))


def test_a_dense_model_is_left_alone():
    model = _model(18)
    state = copy.deepcopy(model.state_dict())
    report = compact(model)
    assert report.removed_channels == {}
    assert report.params_after == report.params_before
    assert report.summary.startswith("no zero channel group")
    assert model.training, "the train/eval mode is restored"
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_unsupported_modules_are_named():
    backbone = tiny_backbone()
    head = nn.Sequential(nn.Conv2d(64, 8, 1), nn.ConvTranspose2d(8, 8, 2), nn.Conv2d(8, 2, 1))
    with pytest.raises(ValueError, match=r"'heads.bad.1' \(ConvTranspose2d\)"):
        compact(MultiTaskModel(backbone, {"bad": head}))


@pytest.mark.parametrize("norm", [nn.GroupNorm(2, 8), nn.LayerNorm([8, 4, 4])])
def test_channels_a_norm_mixes_are_kept(norm):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    with torch.no_grad():
        model[3].weight[:, :5] = 0  # dead to the last conv, but the norm mixes them in
        x = torch.rand(2, 3, 4, 4)
        expected = model(x)
    assert compact(model, x[:1]).removed_channels == {}
    with torch.no_grad():
        _assert_same(expected, model(x))


def test_grouped_convs_lose_channels_in_whole_sets():
    """conv a → BN → conv b (2 conv groups of 4 channels) → BN → conv c."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )
    _sparsify(model, seed=4)
    a, b, c = model[0], model[3], model[6]
    with torch.no_grad():
        a.weight.normal_()  # _sparsify zeroes conv inputs, here the RGB ones too
        b.weight.normal_()
        c.weight.normal_()
        b.weight[:, 1] = 0  # input group 1: channel 1 of both conv groups (a's outputs 1 and 5)
        b.weight[:4, 2] = 0  # a's output 2 is dead, but its partner 6 is read: both stay
        c.weight[:, [0, 1, 5]] = 0  # b's outputs: 2 dead in conv group 0, 1 in conv group 1
        x = _images()
        expected = model(x)
    report = compact(model, x[:1], round_to=None)
    assert (a.out_channels, b.in_channels) == (6, 6)
    assert (b.out_channels, c.in_channels, b.groups) == (6, 6, 2)  # one per conv group: 0 and 5
    assert report.removed_channels == {"3": 2, "6": 2}
    with torch.no_grad():
        _assert_same(expected, model(x))
        kept = model[3].weight[:, :, 1, 1]
    assert kept.shape == (6, 3)


@pytest.mark.parametrize("round_to", [4, 8])
def test_rounded_widths_keep_the_fewest_dead_channels_and_stay_exact(round_to):
    torch.manual_seed(0)
    model = _model(50)
    _sparsify(model, seed=5)
    x = _images()
    with torch.no_grad():
        expected = model(x)
    convs = model.backbone.conv_layers()
    dense = {n: m.in_channels for n, m in convs}
    private = {
        n: max(1, int(live_groups(m.weight, "in_channel").sum()))
        for n, m in convs
        if n.endswith(("conv2", "conv3"))
    }
    report = compact(model, x[:1], round_to=round_to)
    with torch.no_grad():
        _assert_same(expected, model(x))
    convs = dict(model.backbone.conv_layers())
    for name, live in private.items():
        rounded = -(-live // round_to) * round_to
        assert convs[name].in_channels == min(dense[name], rounded), name
    kept = [len(k) for axes in report.plan.layers.values() for k in axes.values()]
    assert kept and all(k % round_to == 0 for k in kept)


def test_rounding_keeps_grouped_convs_valid():
    """conv a → BN → conv b (4 conv groups of 8 channels) → BN → conv c, round_to 8."""
    model = nn.Sequential(
        nn.Conv2d(3, 32, 1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 4, 1),
    ).eval()
    a, b, c = model[0], model[3], model[6]
    with torch.no_grad():
        b.weight[:, [1, 2, 3]] = 0  # 3 input positions of every conv group: 12 of a's outputs
        c.weight[:, [0, 1, 2, 8, 9, 16, 17, 24, 25, 26]] = 0  # b's outputs: 3, 2, 2, 3 per group
        x = _images()
        expected = model(x)
    compact(model, x[:1], round_to=8)
    # inputs: 20 live → one dead position per conv group kept (24); outputs: 2 per group go
    assert (a.out_channels, b.in_channels, b.out_channels, c.in_channels) == (24, 24, 24, 24)
    assert b.groups == 4 and b.weight.shape[1] == 6
    with torch.no_grad():
        _assert_same(expected, model(x))


def test_a_fully_zero_layer_input_keeps_round_to_channels():
    model = _model(18).eval()
    with torch.no_grad():
        model.backbone.layer2[0].conv2.weight.zero_()
    compact(model, round_to=8)
    assert model.backbone.layer2[0].conv2.in_channels == 8
    with pytest.raises(ValueError, match="round_to must be None or a positive"):
        compact(model, round_to=0)


def test_a_prox_trained_module_compacts_exactly(sparse_checkpoint):
    module, _ = sparse_checkpoint
    model = module.model.eval()
    x = _images(4)
    with torch.no_grad():
        expected = model(x)
    report = compact(model)
    assert report.removed_channels, "the prox zeroed whole inputs of private convs"
    assert report.params_after < report.params_before
    with torch.no_grad():
        _assert_same(expected, model(x))


@pytest.fixture(scope="module")
def compacted() -> tuple[MultiTaskModel, Tensor, dict[str, Tensor]]:
    model = _model(50)
    _sparsify(model, seed=7)
    compact(model)
    x = _images()
    with torch.no_grad():
        return model, x, model(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches(tmp_path, compacted):
    model, x, expected = compacted
    export_torchscript(model, tmp_path / "model.ts", x[:1])
    with torch.no_grad():
        _assert_same(expected, torch.jit.load(tmp_path / "model.ts")(x))


@pytest.mark.slow
def test_onnx_export_matches_in_onnxruntime(tmp_path, compacted):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    model, x, expected = compacted
    names = export_onnx(model, tmp_path / "model.onnx", x[:1])
    assert names == ["seg", "attr"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == names
    outputs = session.run(None, {"images": x.numpy()})  # batch 2: the batch axis is dynamic
    _assert_same(expected, {k: torch.from_numpy(v) for k, v in zip(names, outputs, strict=True)})


def test_benchmark_smoke(tmp_path):
    results = benchmark_compaction(
        depth=18,
        image_size=32,
        sparsities=(0.0, 0.5),
        batch_sizes=(1,),
        rounds=1,
        min_run_time=0.01,
        width=8,
        layers=[1, 1, 1, 1],
    )
    assert [r["sparsity"] for r in results] == [0.0, 0.5]
    assert results[0]["macs_ratio"] == 1.0
    assert results[1]["macs_ratio"] > 1.0
    assert results[1]["params_compacted"] < results[1]["params_dense"]
    assert all(r["latency_dense_ms"] > 0 and r["latency_compacted_ms"] > 0 for r in results)
    save_figure(latency_plot(results), tmp_path / "latency.png", dpi=150)
    assert (tmp_path / "latency.png").stat().st_size > 0
