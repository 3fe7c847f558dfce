"""`lightning-mtl lomt`: stage 1 → selection → stage 2 → comparison, on tiny synthetic runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lightning_mtl.cli.main import main
from lightning_mtl.lomt import TaskProfile
from lightning_mtl.reporting import delta_m

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "lomt" / "synthetic.yaml"


def tiny(tmp_path: Path) -> list[str]:
    every_run = [
        "--model.backbone_options", "{width: 8, layers: [1, 1, 1, 1]}",
        "--model.head_channels", "8",
        "--data.init_args.image_size", "[32, 32]",
        "--data.init_args.root", str(tmp_path / "data"),
        "--data.init_args.synthesize", "16",
        "--data.init_args.num_workers", "0",
        "--trainer.callbacks", "[]",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip
    return [
        "--config", str(CONFIG),
        "--root", str(tmp_path / "lomt"),
        "--tasks", "[seg, edge]",
        "--combinations", "[[seg, edge]]",
        "--seeds", "[0]",
        "--args", json.dumps(every_run),
        "--stage1.args", '["--trainer.max_epochs", "1"]',
        "--stage2.args", '["--trainer.max_epochs", "1"]',
        "--stage2.latency_rounds", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One tiny end-to-end run, with the edge tap overridden to an early conv."""
    tmp_path = tmp_path_factory.mktemp("lomt")
    main(["lomt", *tiny(tmp_path), "--selection.taps", "{edge: layer2.0.conv1}"])
    return tmp_path / "lomt"


@pytest.mark.slow
def test_stage1_writes_a_profile_and_plot_per_task(pipeline):
    for task in ("seg", "edge"):
        profile = TaskProfile.load(pipeline / "profiles" / f"{task}.json")
        assert profile.task == task and list(profile.seeds) == [0]
        assert profile.layers[0] == "conv1" and len(profile.layers) == 12
        assert profile.architecture["backbone"] == "resnet18"
        assert (pipeline / "profiles" / f"{task}.png").stat().st_size > 0
        run = json.loads((pipeline / "stage1" / f"{task}_seed0" / "result.json").read_text())
        assert run["tasks"] == task
        assert list(run["layers"].values()) == profile.seeds[0]


def test_selection_writes_the_stage2_config_with_the_override(pipeline):
    taps = yaml.safe_load((pipeline / "stage2.yaml").read_text())["model"]["taps"]
    assert taps["edge"] == "layer2.0.conv1"  # the override
    assert taps["seg"] in TaskProfile.load(pipeline / "profiles" / "seg.json").layers


def test_comparison_table_matches_the_runs(pipeline):
    rows = list(csv.DictReader((pipeline / "comparison.csv").read_text().splitlines()))
    assert [r["model"] for r in rows] == ["conventional", "lomt"]
    runs = {
        kind: json.loads(
            (pipeline / "stage2" / f"{kind}_seg+edge_seed0" / "result.json").read_text()
        )
        for kind in ("conventional", "lomt")
    }
    assert runs["lomt"]["taps"]["edge"] == "layer2.0.conv1" and not runs["conventional"]["taps"]
    main = runs["conventional"]["main_metrics"]
    keys = {t: f"test/{t}/{main[t]}" for t in ("seg", "edge")}
    for row in rows:
        run = runs[row["model"]]
        for key in keys.values():
            assert float(row[key]) == pytest.approx(run["metrics"][key])
        assert int(row["macs"]) == run["macs"] and int(row["params"]) == run["params"]
        assert float(row["latency_ms"]) > 0
    # with one head on layer2 the LOMT backbone still runs to the seg tap only
    assert runs["lomt"]["macs"] <= runs["conventional"]["macs"]
    expected = delta_m(
        {t: runs["lomt"]["metrics"][k] for t, k in keys.items()},
        {t: runs["conventional"]["metrics"][k] for t, k in keys.items()},
        {t: runs["conventional"]["higher_is_better"][t][main[t]] for t in keys},
    )
    assert float(rows[1]["delta_m_pct"]) == pytest.approx(expected)
    table = (pipeline / "comparison.md").read_text()
    assert "### seg+edge" in table and "| lomt |" in table


@pytest.mark.slow
def test_a_rerun_skips_complete_runs(pipeline, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in pipeline.glob("*/*/result.json")}
    main(["lomt", *tiny(pipeline.parent), "--selection.taps", "{edge: layer2.0.conv1}"])
    assert {p: p.stat().st_mtime_ns for p in pipeline.glob("*/*/result.json")} == before


def test_delta_m_signs_by_direction():
    # +10 % on a higher-is-better metric, error −10 % (better) on a lower-is-better one
    assert delta_m({"a": 1.1, "b": 0.9}, {"a": 1.0, "b": 1.0}, {"a": True, "b": False}) == (
        pytest.approx(10.0)
    )


def test_a_task_without_profile_or_tap_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"tasks \['normal'\] without a profile"):
        main(["lomt", *tiny(tmp_path), "--combinations", "[[seg, normal]]"])
    assert not (tmp_path / "lomt").exists()


def test_a_profile_of_another_backbone_is_refused(pipeline, tmp_path):
    wider = ["--stage2.args", '["--model.backbone_options", "{width: 16, layers: [1, 1, 1, 1]}"]']
    with pytest.raises(ValueError, match="profile of task seg was made with backbone"):
        main(["lomt", *tiny(pipeline.parent), "--stages", "[select]", *wider])


@pytest.mark.parametrize("config", sorted((ROOT / "experiments" / "lomt").glob("*.yaml")))
def test_lomt_configs_print_and_name_real_convs(config, capsys):
    from lightning_mtl.models import build_backbone

    with pytest.raises(SystemExit) as exit_info:
        main(["lomt", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (ROOT / printed["base_config"]).is_file()
    base = yaml.safe_load((ROOT / printed["base_config"]).read_text())["model"]
    convs = [n for n, _ in build_backbone(base["backbone"]).conv_layers()]
    assert set(printed["selection"]["taps"].values()) <= set(convs)
    assert {t for c in printed["combinations"] for t in c} <= set(printed["tasks"])
