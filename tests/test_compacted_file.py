"""A compacted model file is data: it loads with `torch.load(weights_only=True)`, rebuilds the
compacted architecture from the builder's arguments and the plan, and gives the compacted
model's outputs bit for bit; a file whose plan, architecture and weights disagree is refused
with `CompactionPlanError`, naming the file and the layer or key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_mtl.benchmarks.compaction import zero_random_groups
from lightning_mtl.models.builder import HeadSpec, ModelSpec, build_from_spec
from lightning_mtl.models.compacted import COMPACTED_FORMAT, load_compacted, save_compacted
from lightning_mtl.sparsity import CompactionPlanError, compact
from tests.helpers import TINY_BACKBONE

HEADS = {"seg": HeadSpec("dense", 5), "attr": HeadSpec("classification", 3)}
#: a dilated ResNet, a torchvision family (depthwise convs, squeeze-excitation) and LOMT taps
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet50": {"backbone": "resnet50", "backbone_options": {"width": 8, "layers": [1, 1, 1, 2]}},
    "mobilenet_v3": {"backbone": "mobilenet_v3_small", "backbone_options": {"width_mult": 0.25}},
    "lomt": {
        "backbone": "resnet18",
        "backbone_options": TINY_BACKBONE,
        "taps": {"seg": "layer2.0.conv2", "attr": "layer3.0.conv1"},
    },
}


def _images() -> Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _saved(path: Path, architecture: str, round_to: int | None = 8) -> tuple[nn.Module, dict]:
    """A half-zeroed, compacted model of `architecture` saved at `path`; (model, outputs)."""
    torch.manual_seed(0)
    spec = ModelSpec(HEADS, head_channels=8, **ARCHITECTURES[architecture])
    model = build_from_spec(spec).eval()
    zero_random_groups(model, 0.5, torch.Generator().manual_seed(0))
    report = compact(model, _images()[:1], round_to=round_to)
    assert report.plan.layers, "something was compacted"
    save_compacted(model, path, spec=spec, plan=report.plan)
    with torch.no_grad():
        return model, model(_images())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_saved_model_loads_as_data_with_identical_outputs(tmp_path, architecture):
    path = tmp_path / "model.pt"
    model, expected = _saved(path, architecture)
    data = torch.load(path, weights_only=True)  # no pickled class in the file
    assert set(data) == {"format", "version", "model_spec", "plan", "state_dict"}
    loaded = load_compacted(path)
    assert not loaded.training
    with torch.no_grad():
        got = loaded(_images())
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in loaded.state_dict().items()} == shapes


def _tampered(path: Path, change: str) -> Path:
    data = torch.load(path, weights_only=True)
    state, plan = data["state_dict"], data["plan"]
    key = "backbone.body.layer1.0.conv1.weight"
    if change == "shape":
        state[key] = state[key][:-1]
    elif change == "missing key":
        del state[key]
    elif change == "extra key":
        state["backbone.extra.weight"] = torch.zeros(1)
    elif change == "unknown layer":
        plan["backbone.layer9.0.conv1"] = {"out": [0]}
    elif change == "plan shrinks a layer more":
        layer = next(iter(plan))
        plan[layer]["out"] = plan[layer]["out"][:-1]
    elif change == "index out of range":
        layer = next(iter(plan))
        plan[layer]["out"] = [*plan[layer]["out"], 10_000]
    bad = path.with_name(f"{change.replace(' ', '_')}.pt")
    torch.save(data, bad)
    return bad


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("shape", r"'backbone.body.layer1.0.conv1.weight': the architecture and plan give shape "
         r"\[\d+, \d+, 3, 3\], the weights have \[\d+, \d+, 3, 3\]"),
        ("missing key", r"missing keys \['backbone.body.layer1.0.conv1.weight'\]"),
        ("extra key", r"unexpected keys \['backbone.extra.weight'\]"),
        ("unknown layer", r"layer 'backbone.layer9.0.conv1' of the plan is not a conv.*none"),
        ("plan shrinks a layer more", r"the architecture and plan give shape .* the weights have"),
        ("index out of range", r"kept indices must be sorted, distinct and in \[0, \d+\)"),
    ],
)  # fmt: skip
def test_a_file_whose_plan_does_not_fit_its_weights_is_refused(tmp_path, change, match):
    path = tmp_path / "model.pt"
    _saved(path, "lomt", round_to=None)
    bad = _tampered(path, change)
    with pytest.raises(CompactionPlanError, match=match) as error:
        load_compacted(bad)
    assert str(bad) in str(error.value)


#: what the code in a pickled file did when it was unpickled
_UNPICKLED: list[str] = []


def _record_unpickling() -> None:
    _UNPICKLED.append("code from the file ran")


class _PickledCode:
    """An object whose unpickling calls `_record_unpickling`."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _record_unpickling, ()


def test_other_files_are_refused_by_name(tmp_path):
    model, _ = _saved(tmp_path / "model.pt", "lomt")
    torch.save(model, tmp_path / "pickled.pt")  # the format before: a pickled module
    torch.save({"format": COMPACTED_FORMAT, "code": _PickledCode()}, tmp_path / "code.pt")
    for name in ("pickled.pt", "code.pt"):  # refused by the weights-only unpickler
        with pytest.raises(
            CompactionPlanError, match=rf"{name} is not a compacted model file: it holds pickled"
        ):
            load_compacted(tmp_path / name)
    assert _UNPICKLED == []
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CompactionPlanError, match=r"other.pt is not a compacted model file"):
        load_compacted(tmp_path / "other.pt")


def test_save_refuses_a_plan_that_does_not_describe_the_model(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(HEADS, head_channels=8, **ARCHITECTURES["lomt"])
    model = build_from_spec(spec).eval()
    zero_random_groups(model, 0.5, torch.Generator().manual_seed(0))
    dense_plan = compact(build_from_spec(spec).eval()).plan  # nothing compacted
    compact(model)
    with pytest.raises(CompactionPlanError, match=r"save_compacted\(.*model.pt\): .* shape"):
        save_compacted(model, tmp_path / "model.pt", spec=spec, plan=dense_plan)
    assert not (tmp_path / "model.pt").exists()


def test_the_spec_is_plain_data():
    spec = ModelSpec(HEADS, backbone="resnet18", backbone_options={"layers": (1, 1, 1, 1)})
    assert spec.backbone_options == {"layers": [1, 1, 1, 1]}
    assert ModelSpec.from_data(spec.to_data()) == spec
    with pytest.raises(TypeError, match=r"backbone_options.norm is a type, not plain data"):
        ModelSpec(HEADS, backbone="resnet18", backbone_options={"norm": nn.BatchNorm2d})
