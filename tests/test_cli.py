"""The `lightning-mtl` command: LightningCLI on the experiment YAMLs, run folders, W&B offline."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from datamodules.celebamask import write_synthetic_celebamask
from datamodules.nyuv2 import write_synthetic_nyuv2
from lightning_mtl.cli.main import main
from tests.wandb_records import history_keys

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--model.backbone_options", "{width: 8, layers: [1, 1, 1, 1]}",
    "--model.head_channels", "8",
    "--data.init_args.image_size", "[32, 32]",
    "--data.init_args.batch_size", "4",
    "--data.init_args.num_workers", "0",
    "--trainer.max_epochs", "1",
    "--trainer.log_every_n_steps", "1",
    "--trainer.callbacks", "[]",
]  # fmt: skip


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "meta", "bench"):
        assert f"\n  {name} " in out


@pytest.mark.parametrize("config", sorted((ROOT / "experiments").glob("*.yaml")))
def test_experiment_configs_print(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["tasks"]
    assert printed["data"]["class_path"].startswith("datamodules.")


def test_fit_writes_the_run_folder_and_an_offline_wandb_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(
        [
            "fit",
            "--config", str(ROOT / "experiments" / "synthetic.yaml"),
            "--model.tasks", "[seg, depth]",
            "--model.lambda_", "0.05",
            "--run.root", str(tmp_path),
            "--run.name", "smoke",
            "--data.init_args.root", str(tmp_path / "synthetic-nyuv2"),
            "--data.init_args.synthesize", "8",
            *TINY,
        ]
    )  # fmt: skip
    run = tmp_path / "smoke"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "sparsity.png").stat().st_size > 0
    assert (run / "samples.png").stat().st_size > 0
    assert (run / "config.yaml").is_file()
    with open(run / "metrics.csv") as f:
        csv_keys = set(next(csv.reader(f)))
    assert {"train/loss", "train/seg/loss", "val/depth/abs_err", "sparsity/group_pct"} <= csv_keys
    assert "train/normal/loss" not in csv_keys, "TASKS selects the tasks"

    wandb_files = list(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    keys = history_keys(wandb_files[0])
    expected = {"train/loss", "train/seg/loss", "weights/depth", "lambda", "val/seg/miou"}
    expected |= {"sparsity/group_pct", "sparsity/param_pct", "sparsity/layer/layer4.0.conv2"}
    assert expected <= keys, expected - keys

    out = capsys.readouterr().out
    assert "run summary" in out
    assert "% group sparsity" in out
    assert f"run folder: {run}\n" in out
    assert f"W&B run: {wandb_files[0].parent} (offline; upload with `wandb sync" in out


def test_unknown_task_fails_at_start_up_listing_what_exists(tmp_path):
    with pytest.raises(
        ValueError, match=r"cannot provide \['sonar'\]; available targets: \[.*'depth'"
    ):
        main(
            [
                "fit",
                "--config", str(ROOT / "experiments" / "synthetic.yaml"),
                "--model.tasks", "[seg, sonar]",
                "--run.root", str(tmp_path),
                "--data.init_args.root", str(tmp_path / "synthetic-nyuv2"),
                "--data.init_args.synthesize", "8",
                *TINY,
            ]
        )  # fmt: skip


@pytest.mark.parametrize(
    ("config", "writer"),
    [
        ("nyuv2.yaml", lambda root: write_synthetic_nyuv2(root, "nyud_mt", 8, 4, (32, 32), 0)),
        ("celebamask.yaml", lambda root: write_synthetic_celebamask(root, 12, 32, 0)),
    ],
)
def test_paper_configs_train_on_a_copy_in_the_real_layout(config, writer, tmp_path, capsys):
    """`make train DATA=nyuv2|celebamask DATA_ROOT=…`, shrunk to seconds."""
    root = writer(tmp_path / "dataset")
    main(
        [
            "fit",
            "--config", str(ROOT / "experiments" / config),
            "--data.init_args.root", str(root),
            "--data.init_args.num_workers", "0",
            "--model.backbone", "resnet18",
            "--run.root", str(tmp_path / "runs"),
            "--run.logger", "csv",
            *TINY,
        ]
    )  # fmt: skip
    assert "run summary" in capsys.readouterr().out


def test_compact_command_saves_and_exports_an_equivalent_smaller_model(
    tmp_path, capsys, sparse_checkpoint
):
    import torch

    from lightning_mtl.sparsity import load_compacted

    module, ckpt = sparse_checkpoint
    out = tmp_path / "compacted"
    exports = ["--image-size", "32", "32", "--torchscript", "--onnx"]
    main(["compact", "--ckpt", str(ckpt), "--out", str(out), *exports])
    printed = capsys.readouterr().out
    assert "params " in printed and "input channels removed" in printed
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.ts", "model.onnx"}
    compacted = load_compacted(out / "model.pt")
    images = torch.rand(2, 3, 32, 32)
    module.model.eval()
    with torch.no_grad():
        expected, got = module.model(images), compacted(images)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)
    params = sum(p.numel() for p in compacted.parameters())
    assert params < sum(p.numel() for p in module.model.parameters())
