"""`lightning-mtl bench` runs end to end (tiny sizes) and reports consistent ratios."""

from __future__ import annotations

import itertools
import json
from typing import get_args

import pytest
import torch
import yaml

from lightning_mtl.benchmarks.main import (
    PARTS,
    Part,
    expected_meta_ratio,
    main,
    parse_meta_config,
)
from lightning_mtl.benchmarks.prox import CASES, kernels_on, peak_bandwidth, tabulated_bandwidth
from lightning_mtl.benchmarks.timing import interleaved_ms, latency_ms, median_ms
from tests.helpers import torch_threads


@pytest.mark.slow
def test_bench_reports_the_prox_cost_the_data_pipeline_and_compaction(capsys, tmp_path):
    tiny = ["--backbone", "resnet18", "--image_size", "32", "--head_channels", "8"]
    data = ["--data_size", "[32, 48]", "--data_workers", "0", "--data_images", "16"]
    plot = tmp_path / "latency.png"
    parts = ["--parts", "prox", "data", "compaction"]  # meta: its own test
    timing = ["--rounds", "1", "--min_run_time", "0.05"]
    result = main(
        [*parts, *tiny, *data, "--plot", str(plot), *timing, "--json", str(tmp_path / "r.json")]
    )
    opt, step = result["optimizer_step"], result["training_step"]
    assert opt["convs"] == 20
    assert list(opt["ms"]) == [
        "AdamW(fused=True)",
        "AdamW()",
        *(
            f"ProxAdamW {case.replace('_', ' ')}, {kernel}"
            for kernel in ("eager", "compiled")
            for case in CASES
        ),
    ]
    assert all(ms > 0 for ms in opt["ms"].values())
    extra = step["ProxAdamW step"] - step["AdamW(fused=True)"]
    assert step["share"] == pytest.approx(extra / step["training step"])
    ratio = opt["ms"]["ProxAdamW euclidean, compiled"] / opt["ms"]["AdamW(fused=True)"]
    assert result["prox_euclidean_vs_adamw_fused"] == pytest.approx(ratio)
    assert result["prox_adaptive_vs_adamw_fused"] == max(
        result[f"prox_adaptive_lambda_{lam}_vs_adamw_fused"] for lam in ("1e-4", "1e-2")
    )
    written = json.loads((tmp_path / "r.json").read_text())
    figures = {k for k in written if k.startswith(("prox_", "adamw_", "compaction_"))}
    assert {"prox_zero_lambda_vs_adamw_fused", "prox_share_of_training_step"} <= figures
    assert written["prox_eager_euclidean_vs_adamw_fused"] == pytest.approx(
        result["prox_eager_euclidean_vs_adamw_fused"]
    )
    assert result["data"]["loader_images_s"] > 0
    assert result["data"]["train_images_s"] > 0
    out = capsys.readouterr().out
    assert "ProxAdamW adaptive lambda 1e-4, compiled" in out
    assert "adaptive prox share of it" in out
    assert "NYU-v2 loader" in out
    assert [r["sparsity"] for r in result["compaction"] if r["batch_size"] == 1] == [
        0.0,
        0.3,
        0.5,
        0.7,
        0.9,
    ]
    assert all(r["macs_ratio"] >= 1 for r in result["compaction"])
    assert plot.stat().st_size > 0


@pytest.mark.slow
def test_backbones_bench_compares_with_the_reference(capsys):
    args = ["--parts", "backbones", "--backbone", "resnet18", "--backbones", "[mobilenet_v3_small]"]
    tiny = ["--image_size", "32", "--head_channels", "8", "--rounds", "1"]
    rows = main([*args, *tiny])["backbones"]
    assert [r["backbone"] for r in rows] == ["resnet18", "mobilenet_v3_small"]
    assert [r["output_stride"] for r in rows] == [8, 16]
    assert rows[0]["step_ratio"] == 1.0 and rows[1]["step_ms"] > 0
    assert all(r["max_abs_diff"] <= 1e-5 * r["max_abs_output"] for r in rows)
    assert "mobilenet_v3_small" in capsys.readouterr().out


def test_compaction_bench_measures_a_trained_checkpoint(tmp_path, sparse_checkpoint):
    from lightning_mtl import sparsity_stats

    module, ckpt = sparse_checkpoint
    args = ["--parts", "compaction", "--backbone", "resnet18", "--image_size", "32"]
    args += ["--checkpoint", str(ckpt), "--plot", str(tmp_path / "p.png"), "--rounds", "1"]
    result = main([*args, "--min_run_time", "0.05"])
    trained = [r for r in result["compaction"] if r.get("profile") == "trained"]
    assert [r["batch_size"] for r in trained] == [1, 8]
    expected = sparsity_stats(module.model.backbone).group_pct / 100
    assert trained[0]["sparsity"] == pytest.approx(expected)
    assert (
        trained[0]["params_compacted"] <= trained[0]["params_rounded"] < trained[0]["params_dense"]
    )
    assert trained[0]["macs_ratio_rounded"] <= trained[0]["macs_ratio"]
    for profile in ("random", "trained"):
        keys = [f"latency_vs_macs_{profile}", f"latency_vs_macs_{profile}_round8"]
        for key in [*keys, f"macs_cost_round8_{profile}"]:
            figure = result[f"compaction_{key}"]
            assert set(figure) == {"batch_1", "batch_8"} and min(figure.values()) > 0, key


TINY_META = [
    "--meta_backbone",
    "resnet18",
    "--meta_width",
    "8",
    "--meta_head_channels",
    "8",
    "--meta_image_size",
    "16",
    "--meta_warmup",
    "0",
    "--meta_rounds",
    "1",
]


def test_meta_bench_times_outer_steps_against_the_mtl_step(capsys):
    assert "meta" in PARTS  # in the default parts: `make bench` runs it
    configs = ["2x1", "1x2fo"]
    result = main(
        ["--parts", "meta", "--device", "cpu", *TINY_META, "--meta_configs", str(configs)]
    )
    meta = result["meta"]
    assert meta["mtl_ms"] > 0
    assert list(meta["configs"]) == configs
    for spec, r in meta["configs"].items():
        assert (r["B"], r["K"], r["first_order"]) == parse_meta_config(spec)
        assert r["ms"] > 0
        assert r["ratio"] == pytest.approx(r["ms"] / meta["mtl_ms"])
        assert len(r["tasks"]) == len(set(r["tasks"])) == r["B"]  # distinct combinations
    assert meta["configs"]["2x1"]["tasks"] == ["seg+depth+normal", "seg+depth"]
    out = capsys.readouterr().out
    rows = {}  # the table's body rows: step | B | K | order | fwds | ms | ratio | expected
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 8 and cells[5] and cells[5] != "ms":
            ms, ratio, expected = cells[5], cells[6].removesuffix("×"), cells[7].removesuffix("×")
            rows[cells[0]] = (float(ms), float(ratio), float(expected))
    assert set(rows) == {"MTL step", *(f"outer {c}" for c in configs)}, out
    assert rows["MTL step"][1:] == (1.0, 1.0)
    for spec, r in meta["configs"].items():
        ms, ratio, expected = rows[f"outer {spec}"]
        assert ms > 0 and ratio > 0
        assert ratio == pytest.approx(r["ratio"], abs=0.01)
        assert expected == pytest.approx(r["expected_ratio"])


def test_bench_writes_its_result_as_json(tmp_path):
    """`--json FILE`: the whole result, every part's entries under their own keys."""
    out = tmp_path / "bench.json"
    result = main(["--parts", "meta", "--device", "cpu", *TINY_META, "--json", str(out)])
    written = json.loads(out.read_text())
    assert written.keys() == result.keys() == {"meta"}
    assert written["meta"]["mtl_ms"] == pytest.approx(result["meta"]["mtl_ms"])


@pytest.mark.slow
def test_train_compaction_bench_times_runs_with_and_without_the_option(tmp_path, capsys):
    """Two seeds of a tiny version of the config: each seed's pair of runs, the speed-up and
    the metric table; the runs with the option end with fewer parameters."""
    compaction = (
        "[{class_path: lightning_mtl.callbacks.TrainTimeCompaction, init_args: {round_to: null}}]"
    )
    tiny = [
        "--model.backbone_options", "{width: 8, layers: [1, 1, 1, 1]}",
        "--model.head_channels", "8",
        "--model.lambda_", "0.3",
        "--model.optimizer.init_args.lr", "0.01",
        "--data.init_args.root", str(tmp_path / "data"),
        "--data.init_args.synthesize", "8",
        "--data.init_args.image_size", "[32, 32]",
        "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0",
        "--trainer.max_epochs", "3",
        "--trainer.callbacks", compaction,
    ]  # fmt: skip
    args = ["--parts", "train_compaction", "--device", "cpu", "--train_compaction_seeds", "[0, 1]"]
    result = main([*args, "--train_compaction_args", json.dumps(tiny)])
    runs = result["train_compaction"]
    assert [(r["seed"], r["compaction"]) for r in runs] == [
        (0, False),
        (0, True),
        (1, True),
        (1, False),
    ]
    for seed in (0, 1):
        dense, compacted = (
            next(r for r in runs if (r["seed"], r["compaction"]) == (seed, c))
            for c in (False, True)
        )
        assert compacted["params_at_end"] < dense["params_at_end"]
        assert len(dense["group_pct"]) == len(compacted["group_pct"]) == 3
    total = result["train_compaction_seconds"]
    assert result["train_compaction_speedup"] == pytest.approx(total["without"] / total["with"])
    assert set(result["train_compaction_metrics"]) == {
        "val/seg/iou",
        "val/depth/abs_err",
        "val/normal/cos_sim",
        "val/loss",
    }
    assert "train-time compaction" in capsys.readouterr().out


def test_meta_cost_model_and_configs():
    assert parse_meta_config("4x1") == (4, 1, False)
    assert parse_meta_config("2x3fo") == (2, 3, True)
    for bad in ("0x1", "2x0", "2", "2x1so"):
        with pytest.raises(ValueError, match="BxK"):
            parse_meta_config(bad)
    assert expected_meta_ratio(2, 1, first_order=True) == 4  # B·(K+1)
    assert expected_meta_ratio(2, 1, first_order=False) == 8  # B·(3K+1)
    assert expected_meta_ratio(2, 2, first_order=False) == 14


def test_the_prox_part_times_the_fused_kernel_of_the_device():
    assert kernels_on(torch.device("cpu")) == ("eager", "compiled")
    assert kernels_on(torch.device("cuda")) == ("eager", "triton")
    assert kernels_on(torch.device("meta")) == ("eager",)


@pytest.mark.parametrize(
    ("name", "entry", "bytes_per_s"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 3.35e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 2.0e12),
        ("NVIDIA H100 NVL", "H100 NVL", 3.9e12),
        ("NVIDIA H200", "H200", 4.8e12),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB", 2.0e12),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB", 1.555e12),
    ],
)
def test_peak_bandwidth_of_a_known_gpu_comes_from_the_table(name, entry, bytes_per_s):
    assert tabulated_bandwidth(name) == (entry, bytes_per_s)


def test_peak_bandwidth_of_an_unknown_device_is_measured_by_a_copy():
    assert tabulated_bandwidth("NVIDIA GeForce RTX 4090") is None
    peak = peak_bandwidth(torch.device("cpu"), 1 << 20, 0.001)
    assert peak["source"] == "measured: copy of 1,048,576 bytes"
    assert peak["bytes_per_s"] > 0


def test_interleaved_rounds_measure_every_statement_once_per_round_in_turn():
    calls = []
    times = iter([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 1.0, 7.0])  # a, b alternating, four rounds

    def measure(fn, min_run_time):
        assert min_run_time == 0.5
        calls.append(fn())
        return next(times)

    medians = interleaved_ms({"a": lambda: "a", "b": lambda: "b"}, 4, 0.5, measure)
    assert calls == ["a", "b"] * 4
    assert medians == {"a": 3.5, "b": 4.5}  # medians of (5, 3, 4, 1) and (1, 2, 9, 7)


def test_timings_run_with_torchs_threads():
    """`torch.utils.benchmark.Timer` alone would time with one thread, whatever the tables say."""
    seen = set()
    with torch_threads(2):
        median_ms(lambda: seen.add(torch.get_num_threads()), 0.001)
    assert seen == {2}


def test_latency_times_each_model_in_inference_mode_in_alternation():
    calls = []

    class Model(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append((self.name, torch.is_inference_mode_enabled(), tuple(x.shape)))
            return x

    models = {name: Model(name) for name in ("dense", "compacted")}
    medians = latency_ms(models, torch.zeros(1, 3, 4, 4), rounds=2, min_run_time=0.001)
    assert list(medians) == ["dense", "compacted"]
    assert {call[1:] for call in calls} == {(True, (1, 3, 4, 4))}
    runs = [name for name, _ in itertools.groupby(name for name, _, _ in calls)]
    assert runs == ["dense", "compacted"] * 2  # one block of calls per model and round


def test_bench_options_come_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "bench.yaml"
    config.write_text("parts: [meta]\nmeta_configs: [2x1fo]\nmeta_layers: [2, 1, 1, 1]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "--meta_rounds", "4", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["parts"] == ["meta"] and printed["meta_configs"] == ["2x1fo"]
    assert printed["meta_layers"] == [2, 1, 1, 1] and printed["meta_rounds"] == 4
    assert printed["data_size"] == [288, 384] and printed["min_run_time"] == 1.0


def test_parts_are_one_or_more_names_checked_by_the_parser(capsys):
    assert list(PARTS) == list(get_args(Part))  # every part runs, in the order of `Part`
    with pytest.raises(SystemExit) as exit_info:
        main(["--parts", "meta", "backbones", "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["parts"] == ["meta", "backbones"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--parts", "prox", "gpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert 'Parser key "parts"' in error and "Got value: gpu" in error
    assert "'train_compaction'" in error  # the error lists the parts
