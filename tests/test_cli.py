"""The `lightning-mtl` command: LightningCLI on the experiment YAMLs, run folders, W&B offline."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from datamodules.celebamask import write_synthetic_celebamask
from datamodules.nyuv2 import write_synthetic_nyuv2
from lightning_mtl.cli.main import JOBS, Job, main
from tests.helpers import TINY_CLI, history_keys

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("fit", "validate", "test", "predict")
#: per job: the subcommand words before its options, and options that complete its config
JOB_ARGS: dict[str, tuple[list[str], list[str]]] = {
    "run": ([], ["--config", str(ROOT / "experiments" / "synthetic.yaml")]),
    "sweep": ([], [str(ROOT / "experiments" / "sweeps" / "synthetic.yaml")]),
    "report": ([], ["runs/synthetic", "--spy", "false", "--latency_size", "[64, 48]"]),
    "meta": ([], ["--config", str(ROOT / "experiments" / "meta" / "synthetic.yaml")]),
    "meta-study": (
        [],
        ["--config", str(ROOT / "experiments" / "meta" / "studies" / "synthetic.yaml")],
    ),
    "lomt": ([], ["--config", str(ROOT / "experiments" / "lomt" / "synthetic.yaml")]),
    "bench": ([], ["--parts", "prox", "--data_size", "[32, 48]", "--rounds", "2"]),
    "data": (["check"], ["--data", "nyuv2", "--root", "data/nyuv2", "--format", "mtan"]),
    "compact": ([], ["--ckpt", "a.ckpt", "--out", "out", "--image_size", "[32, 32]"]),
}


def _exit(capsys, args: list[str]) -> tuple[int | str | None, str, str]:
    """Run `lightning-mtl ARGS`, which must exit; its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in (*TRAINING, *JOBS):
        assert f"\n  {name} " in out, name
    main([])
    assert capsys.readouterr().out == out, "a bare `lightning-mtl` prints the same help"


def test_every_job_has_a_case_here():
    assert set(JOB_ARGS) == set(JOBS)


def test_help_and_dispatch_come_from_the_jobs_table(capsys, monkeypatch):
    def hello(name: str = "world", times: int = 1) -> None:
        """Greet someone: a job that exists only in the table.

        Args:
            name: who is greeted.
            times: how often.
        """
        print(f"hello {name}\n" * times, end="")

    monkeypatch.setitem(JOBS, "hello", Job(hello))
    main(["--help"])
    assert "\n  hello      Greet someone: a job that exists only in the table.\n" in (
        capsys.readouterr().out
    )
    main(["hello", "--name", "you", "--times", "2"])
    assert capsys.readouterr().out == "hello you\nhello you\n"
    code, out, _ = _exit(capsys, ["hello", "--help"])
    assert code == 0
    assert "usage: lightning-mtl hello" in out and "who is greeted." in out


def test_an_unknown_subcommand_fails_listing_the_subcommands(capsys):
    code, _, err = _exit(capsys, ["trian", "--config", "x.yaml"])
    assert code == 2
    assert "unknown subcommand 'trian'" in err
    assert ", ".join([*TRAINING, *JOBS]) in err


@pytest.mark.parametrize("job", list(JOB_ARGS))
def test_every_job_has_help_with_config_and_print_config(job, capsys):
    words, _ = JOB_ARGS[job]
    code, out, _ = _exit(capsys, [job, *words, "--help"])
    assert code == 0
    assert "usage:" in out and "--config" in out and "--print_config" in out


@pytest.mark.parametrize("job", list(JOB_ARGS))
def test_every_job_prints_its_config_and_reads_it_back(job, capsys, tmp_path):
    words, options = JOB_ARGS[job]
    code, printed, _ = _exit(capsys, [job, *words, *options, "--print_config"])
    assert code in (0, None)
    config = yaml.safe_load(printed)
    assert isinstance(config, dict) and config
    path = tmp_path / "config.yaml"
    path.write_text(printed)
    code, again, _ = _exit(capsys, [job, *words, "--config", str(path), "--print_config"])
    assert code in (0, None)
    assert yaml.safe_load(again) == config


@pytest.mark.parametrize("job", list(JOB_ARGS))
def test_every_job_rejects_an_unknown_option_naming_it(job, capsys):
    words, options = JOB_ARGS[job]
    code, _, err = _exit(capsys, [job, *words, *options, "--no_such_option", "1"])
    assert code == 2
    assert "--no_such_option" in err


def test_job_options_reach_the_pipeline_function(capsys, monkeypatch, tmp_path):
    """`report` options, underscored and YAML-typed, become the `report` call's arguments."""
    from types import SimpleNamespace

    from lightning_mtl.pipelines import report as report_module

    calls = []

    def fake_report(*args):
        calls.append(args)
        (tmp_path / "table.md").write_text("| table |")
        return SimpleNamespace(out=tmp_path, left_out={"x": "gone"}, notes=["a note"], figures=[])

    monkeypatch.setattr(report_module, "report", fake_report)
    main(["report", "runs/a", "--split", "val", "--spy", "false", "--latency_rounds", "3"])
    main(["report", "runs/b", "--out", "o", "--latency_size", "[64, 48]"])
    assert calls == [
        (Path("runs/a"), None, "val", False, 3, None),
        (Path("runs/b"), Path("o"), "test", True, 0, (64, 48)),
    ]
    out = capsys.readouterr().out
    assert "| table |" in out and "left out x: gone" in out and "a note" in out
    code, _, err = _exit(capsys, ["report", "runs/a", "--split", "train"])
    assert code == 2 and "split" in err


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
            *TINY_CLI,
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
                *TINY_CLI,
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
            *TINY_CLI,
        ]
    )  # fmt: skip
    assert "run summary" in capsys.readouterr().out


@pytest.mark.slow
def test_compact_command_saves_and_exports_an_equivalent_smaller_model(
    tmp_path, capsys, sparse_checkpoint
):
    import torch

    from lightning_mtl.models.compacted import load_compacted

    module, ckpt = sparse_checkpoint
    out = tmp_path / "compacted"
    exports = ["--image_size", "[32, 32]", "--torchscript", "true", "--onnx", "true"]
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


@pytest.mark.parametrize(
    ("option", "allowed"),
    [("prox_metric", "'adaptive', 'euclidean', 'uncorrected'"), ("group_by", "'in_channel'")],
)
def test_a_bad_optimizer_choice_fails_at_parsing_listing_the_choices(option, allowed, capsys):
    config = str(ROOT / "experiments" / "synthetic.yaml")
    bad = [f"--model.optimizer.init_args.{option}", "bogus", "--print_config"]
    code, _, err = _exit(capsys, ["fit", "--config", config, *bad])
    assert code == 2
    assert f'Parser key "{option}"' in err and "Got value: bogus" in err and allowed in err
