"""`lightning-mtl bench` runs end to end (tiny sizes) and reports consistent ratios."""

from __future__ import annotations

import pytest

from lightning_mtl.benchmark import main


def test_bench_reports_the_prox_cost_the_data_pipeline_and_compaction(capsys, tmp_path):
    tiny = ["--backbone", "resnet18", "--image-size", "32", "--head-channels", "8"]
    data = ["--data-size", "32", "48", "--data-workers", "0", "--data-images", "16"]
    plot = tmp_path / "latency.png"
    result = main([*tiny, *data, "--plot", str(plot), "--rounds", "1", "--min-run-time", "0.05"])
    opt, step = result["optimizer_step"], result["training_step"]
    assert opt["convs"] == 20
    assert all(opt[k] > 0 for k in ("AdamW", "ProxAdamW adaptive", "ProxAdamW euclidean"))
    assert step["share"] == pytest.approx(step["prox"] / step["training step"])
    assert result["data"]["loader_images_s"] > 0
    assert result["data"]["train_images_s"] > 0
    out = capsys.readouterr().out
    assert "ProxAdamW adaptive step" in out
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


def test_compaction_bench_measures_a_trained_checkpoint(tmp_path, sparse_checkpoint):
    from lightning_mtl import sparsity_stats

    module, ckpt = sparse_checkpoint
    args = ["--parts", "compaction", "--backbone", "resnet18", "--image-size", "32"]
    args += ["--checkpoint", str(ckpt), "--plot", str(tmp_path / "p.png"), "--rounds", "1"]
    rows = main([*args, "--min-run-time", "0.05"])["compaction"]
    trained = [r for r in rows if r.get("profile") == "trained"]
    assert [r["batch_size"] for r in trained] == [1, 8]
    expected = sparsity_stats(module.model.backbone).group_pct / 100
    assert trained[0]["sparsity"] == pytest.approx(expected)
    assert trained[0]["params_compacted"] < trained[0]["params_dense"]
