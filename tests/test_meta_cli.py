"""`lightning-mtl meta`: meta-train then meta-test from one config; start-up errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from lightning_mtl.cli.main import main
from lightning_mtl.meta.meta_test import MetaTestOptions, check_meta_test
from tests.helpers import TINY_META_ARGS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", sorted((ROOT / "experiments" / "meta").glob("*.yaml")))
def test_meta_configs_print(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["meta", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["lambda_init"] > 0
    assert printed["data"]["class_path"] == "datamodules.MetaTaskDataModule"
    assert printed["meta_test"]["unseen"], "every meta config meta-tests a held-out task"


def test_meta_trains_then_writes_the_meta_test_table(tmp_path, capsys):
    main(
        [
            "meta",
            "--config", str(ROOT / "experiments" / "meta" / "synthetic.yaml"),
            "--run.root", str(tmp_path),
            "--run.name", "meta",
            "--run.logger", "csv",
            "--data.init_args.datamodule.init_args.root", str(tmp_path / "data"),
            *TINY_META_ARGS,
        ]
    )  # fmt: skip
    run = tmp_path / "meta"
    logged = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "lambda", "meta/rho_grad", "meta/inner_loss", "val/seg/miou"):
        assert key in logged
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run / "meta_test" / "meta_test.csv").read_text().splitlines()))
    assert [(r["phase"], r["init"], r["tasks"]) for r in rows] == [
        ("seen", "meta", "seg+depth+normal"),
        ("seen", "scratch", "seg+depth+normal"),
        ("unseen", "meta", "edge"),
        ("unseen", "scratch", "edge"),
    ]
    assert all(0 <= float(r["group_pct"]) <= 100 for r in rows)
    assert all(float(r["test/seg/miou"]) >= 0 for r in rows[:2])
    assert rows[2]["test/edge/ods_f1"] and not rows[2]["test/seg/miou"]
    # the meta-learned λ* is what every fine-tuning run applies
    lam = [float(v) for v in {r["lambda"] for r in rows}]
    assert len(lam) == 1 and lam[0] > 0
    table = (run / "meta_test" / "meta_test.md").read_text()
    assert table in capsys.readouterr().out
    assert table.count("\n") == 2 + len(rows)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (MetaTestOptions(unseen=[["floor"]]), r"task 'floor' cannot be built"),
        (
            MetaTestOptions(seen=[["seg", "edge"]]),
            r"has tasks \['edge'\] that were not meta-trained",
        ),
        (MetaTestOptions(unseen=[["seg"]]), r"holds out no task"),
        (MetaTestOptions(seen=[[]]), r"empty task set"),
        (MetaTestOptions(epochs=0), r"epochs must be >= 1"),
        (MetaTestOptions(patience=0), r"patience must be >= 1"),
    ],
)
def test_meta_test_options_are_checked_before_training(options, match):
    from datamodules import SyntheticDataModule

    with pytest.raises(ValueError, match=match):
        check_meta_test(options, ["seg", "depth"], SyntheticDataModule().targets)


def test_meta_command_fails_at_start_up_on_a_task_the_data_cannot_provide(tmp_path):
    with pytest.raises(ValueError, match=r"meta_test.unseen task 'sky' cannot be built"):
        main(
            [
                "meta",
                "--config", str(ROOT / "experiments" / "meta" / "synthetic.yaml"),
                "--run.root", str(tmp_path),
                "--run.logger", "csv",
                "--data.init_args.datamodule.init_args.root", str(tmp_path / "data"),
                *TINY_META_ARGS,
                "--meta_test.unseen", "[[sky]]",
            ]
        )  # fmt: skip
    assert not any(tmp_path.glob("*/metrics.csv")), "nothing was trained"
