"""LOMT tap selection on constructed profiles: the rule, its ties, overrides, errors, JSON, plot."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lightning_mtl.lomt import TaskProfile, active_layers, profile_plot, select_tap, select_taps
from lightning_mtl.sparsity import sparsity_stats

ARCH = {"backbone": "resnet50", "backbone_options": {"dilated": True}}


def _profile(*patterns: str, task: str = "seg", arch=ARCH) -> TaskProfile:
    """One seed per pattern, one conv `l<i>` per character: `A` live (0.5), `.` dead (0.0)."""
    layers = [f"l{i}" for i in range(len(patterns[0]))]
    seeds = {s: [0.5 if c == "A" else 0.0 for c in p] for s, p in enumerate(patterns)}
    return TaskProfile(task, arch, layers, seeds)


@pytest.mark.parametrize(
    ("pattern", "window", "tap"),
    [
        ("AAAA", 2, "l3"),  # all active: the last conv
        ("AA..A", 2, "l1"),  # the first window of 2 dead convs stops the scan
        ("AA..", 2, "l1"),  # ... also at the end of the network
        ("AA.A..A", 2, "l3"),  # a run of window-1 does not stop it
        ("AA.A..A", 1, "l1"),  # window 1: the first dead conv stops it
        ("AA.A..A", 3, "l6"),  # no run of 3: the last active conv
        ("AA.A...A", 3, "l3"),
        ("AA.", 2, "l1"),  # no full window: the last active conv
        ("..AA..A", 2, "l3"),  # leading dead convs open no window
        ("...A", 2, "l3"),
        ("...A", 1, "l3"),
    ],
)
def test_tap_rule(pattern, window, tap):
    assert select_tap(_profile(pattern), window=window) == tap


def test_exactly_the_threshold_is_inactive():
    profile = TaskProfile("seg", ARCH, ["a", "b", "c", "d"], {0: [0.5, 0.01, 0.01, 0.5]})
    assert active_layers(profile) == [True, False, False, True]
    assert select_tap(profile) == "a"
    assert select_tap(profile, threshold=0.009) == "d"
    assert active_layers(profile, threshold=0.5) == [False] * 4
    nudged = TaskProfile("seg", ARCH, ["a", "b"], {0: [0.5, math.nextafter(0.01, 1)]})
    assert active_layers(nudged) == [True, True]


def test_threshold_zero_needs_one_live_group():
    profile = TaskProfile("seg", ARCH, ["a", "b", "c"], {0: [0.5, 0.0, 1e-9]})
    assert active_layers(profile, threshold=0.0) == [True, False, True]


def test_seeds_must_all_agree():
    agree = _profile("AAAA", "AAAA")
    disagree = _profile("AAAA", "A..A")
    assert select_tap(agree) == "l3"
    assert active_layers(disagree) == [True, False, False, True]
    assert select_tap(disagree) == "l0"
    # one seed below the threshold makes the conv inactive even if the others are far above it
    mixed = TaskProfile("seg", ARCH, ["a", "b"], {0: [1.0, 1.0], 1: [1.0, 0.01], 2: [1.0, 0.9]})
    assert active_layers(mixed) == [True, False]


def test_all_dead_names_the_task_and_the_ways_out():
    with pytest.raises(ValueError, match="task depth: no conv is active") as err:
        select_tap(_profile("....", task="depth"))
    for hint in ("lower λ", "threshold", "override"):
        assert hint in str(err.value)


@pytest.mark.parametrize("window", [0, -1])
def test_bad_window(window):
    with pytest.raises(ValueError, match="window must be >= 1"):
        select_tap(_profile("AA"), window=window)


@pytest.mark.parametrize("threshold", [-0.01, 1.0, 1.5, float("nan")])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        select_tap(_profile("AA"), threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        active_layers(_profile("AA"), threshold=threshold)


LAYERS = [f"l{i}" for i in range(5)]


def _profiles() -> dict[str, TaskProfile]:
    return {
        "seg": _profile("AA..A", task="seg"),
        "depth": _profile("AAA.A", task="depth"),
        "normal": _profile("A....", task="normal"),
    }


def test_select_taps_profiles_and_overrides():
    taps = select_taps(_profiles(), ["depth", "seg"], LAYERS, ARCH)
    assert taps == {"depth": "l4", "seg": "l1"}
    assert list(taps) == ["depth", "seg"]  # the order of `tasks`
    taps = select_taps(_profiles(), ["seg", "depth"], LAYERS, ARCH, window=1)
    assert taps == {"seg": "l1", "depth": "l2"}
    # an override wins over the profile, and a task may have only an override
    taps = select_taps(
        _profiles(), ["seg", "depth", "edge"], LAYERS, ARCH, overrides={"seg": "l3", "edge": "l0"}
    )
    assert taps == {"seg": "l3", "depth": "l4", "edge": "l0"}


def test_an_override_skips_its_profile():
    profiles = {"seg": _profile("AA..A", arch={"backbone": "resnet18"})}
    assert select_taps(profiles, ["seg"], LAYERS, ARCH, overrides={"seg": "l2"}) == {"seg": "l2"}


def test_architecture_compares_in_json_form():
    profile = _profile("AA..A", arch={"backbone": "resnet50", "strides": (False, True, True)})
    arch = {"backbone": "resnet50", "strides": [False, True, True]}
    assert select_taps({"seg": profile}, ["seg"], LAYERS, arch) == {"seg": "l1"}


def test_missing_profile_names_the_task_and_the_profiles():
    with pytest.raises(ValueError, match="task edge has neither") as err:
        select_taps(_profiles(), ["seg", "edge"], LAYERS, ARCH)
    assert "['depth', 'normal', 'seg']" in str(err.value)


def test_override_must_be_a_conv_of_the_model():
    with pytest.raises(ValueError, match="'layer9' for task seg is not a conv") as err:
        select_taps(_profiles(), ["seg"], LAYERS, ARCH, overrides={"seg": "layer9"})
    assert "l0, l1, l2, l3, l4" in str(err.value)


def test_override_for_a_task_not_in_the_model():
    with pytest.raises(ValueError, match=r"overrides for tasks \['edge'\] not in"):
        select_taps(_profiles(), ["seg"], LAYERS, ARCH, overrides={"edge": "l0"})


def test_profile_of_another_architecture():
    profiles = {"seg": _profile("AA..A", arch={"backbone": "resnet18"})}
    with pytest.raises(ValueError, match="profile of task seg was made with backbone") as err:
        select_taps(profiles, ["seg"], LAYERS, ARCH)
    assert f'{{"backbone": "resnet18"}} but the stage-2 model is {json.dumps(ARCH)}' in str(
        err.value
    )


def test_profile_of_other_convs():
    with pytest.raises(ValueError, match="task seg was made with other convs") as err:
        select_taps(_profiles(), ["seg"], [*LAYERS[:3], "x", LAYERS[4]], ARCH)
    assert "first difference at position 3: 'l3' vs 'x'" in str(err.value)
    with pytest.raises(ValueError, match=r"5 vs 6 convs, .* position 5: \(end\) vs 'l5'"):
        select_taps(_profiles(), ["seg"], [*LAYERS, "l5"], ARCH)


def test_profile_filed_under_another_task():
    with pytest.raises(ValueError, match="given for task seg is the profile of task depth"):
        select_taps({"seg": _profiles()["depth"]}, ["seg"], LAYERS, ARCH)


def test_json_round_trip_is_exact(tmp_path):
    arch = {"backbone": "resnet50", "backbone_options": {"dilated": True, "stem": "deep"}}
    layers = ["conv1.0", "conv1.3", "layer1.0.conv1", "layer2.0.downsample.0"]
    seeds = {7: [0.1 + 0.2, 1 / 3, 0.01, 0.0], 3: [1.0, 2 / 3, 1e-300, 0.5]}
    profile = TaskProfile("normal", arch, layers, seeds)
    path = tmp_path / "normal.json"
    profile.save(path)
    loaded = TaskProfile.load(path)
    assert loaded == profile
    assert list(loaded.seeds) == [7, 3]
    doc = json.loads(path.read_text())
    assert path.read_text().startswith('{\n  "task"')  # indented for a reader
    assert doc["threshold"] == 0.01
    assert [layer["active"] for layer in doc["layers"]] == [True, True, False, False]
    assert doc["layers"][1] == {"name": "conv1.3", "live": [1 / 3, 2 / 3], "active": True}


def _good_doc() -> dict:
    return {
        "task": "seg",
        "architecture": ARCH,
        "seeds": [0, 1],
        "layers": [{"name": "a", "live": [0.5, 0.6]}, {"name": "b", "live": [0.0, 0.1]}],
    }


def _set(doc: dict, key: str, value) -> dict:
    doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON file"),
        (b"\xff\xfe\x00", "not a JSON file"),
        ([1, 2], "must be a JSON object, got list"),
        ({k: v for k, v in _good_doc().items() if k != "seeds"}, r"missing keys \['seeds'\]"),
        (_set(_good_doc(), "layers", [{"name": "a"}]), "layer record 0 is missing keys"),
        (_set(_good_doc(), "layers", [{"name": "a", "live": [0.5]}]), "one fraction per seed"),
        (_set(_good_doc(), "layers", [{"name": "a", "live": [0.5, 1.5]}]), "seed 1, layer a"),
        (_set(_good_doc(), "layers", [{"name": "a", "live": [-0.1, 0.5]}]), "not in \\[0, 1\\]"),
        (_set(_good_doc(), "layers", [{"name": "a", "live": [0.5, "x"]}]), "not in \\[0, 1\\]"),
        (_set(_good_doc(), "layers", []), "no layers"),
        (
            _set(_set(_good_doc(), "seeds", []), "layers", [{"name": "a", "live": []}]),
            "no seeds",
        ),
        (_set(_good_doc(), "seeds", ["0", "1"]), "must be integers"),
        (_set(_good_doc(), "seeds", [1, 1]), "duplicate seeds"),
        (_set(_good_doc(), "architecture", "resnet50"), '"architecture" must be an object'),
        (
            _set(_good_doc(), "layers", [{"name": "a", "live": [0.5, 0.5]}] * 2),
            "duplicate layer names",
        ),
    ],
)
def test_bad_files_are_named_and_explained(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        TaskProfile.load(path)
    assert str(err.value).startswith(f"{path}: ")


def test_good_doc_loads(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_good_doc()))
    assert TaskProfile.load(path) == TaskProfile(
        "seg", ARCH, ["a", "b"], {0: [0.5, 0.0], 1: [0.6, 0.1]}
    )


def test_construction_validates():
    with pytest.raises(ValueError, match="seed 0 has 1 fractions but there are 2 layers"):
        TaskProfile("seg", ARCH, ["a", "b"], {0: [0.5]})
    with pytest.raises(ValueError, match="JSON-serializable"):
        TaskProfile("seg", {"backbone": object()}, ["a"], {0: [0.5]})


def test_from_stats_of_sparsity_stats():
    a = torch.ones(4, 4, 3, 3)
    a[:, :3] = 0  # 1 of 4 input groups live
    b = torch.ones(4, 4, 3, 3)
    runs = {0: sparsity_stats({"a": a, "b": b}), 1: {"a": 0.5, "b": 0.0}}
    profile = TaskProfile.from_stats("seg", ARCH, runs)
    assert profile.layers == ["a", "b"]
    assert profile.seeds == {0: [0.25, 1.0], 1: [0.5, 0.0]}
    with pytest.raises(ValueError, match="seed 1 and seed 0 have different convs"):
        TaskProfile.from_stats("seg", ARCH, {0: {"a": 0.5, "b": 0.5}, 1: {"b": 0.5, "a": 0.5}})


def test_profile_plot(tmp_path):
    profile = _profile("AA..A", "AAA.A", task="normal")
    fig = profile_plot(profile, tap="l1")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == LAYERS
    colors = [t.get_color() for t in ax.get_yticklabels()]
    assert colors == ["black", "black", "red", "red", "black"]
    assert "tap l1" in ax.get_title()
    (box,) = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert box.get_y() == pytest.approx(0.5)  # row of l1
    fig.savefig(tmp_path / "normal.png")
    assert (tmp_path / "normal.png").read_bytes()[:4] == b"\x89PNG"
    plt.close(fig)
    plt.close(profile_plot(profile))  # no tap: nothing marked
    with pytest.raises(ValueError, match="'x' is not a conv of the profile of task normal"):
        profile_plot(profile, tap="x")
