"""`make gpu-check` (scripts/gpu_check.py) runs end to end as a CPU dry run and writes the JSON
the GPU run writes, key for key."""

from __future__ import annotations

import json
import subprocess
import sys

from lightning_mtl.benchmarks.prox import CASES
from tests.helpers import ROOT

TARGETS = {
    "prox_adaptive_vs_adamw_fused",
    "prox_euclidean_vs_adamw_fused",
    "prox_zero_lambda_vs_adamw_fused",
    "prox_share_of_training_step",
    "prox_host_syncs_per_step",
}
FIGURES = {
    *(f"prox_{case}_vs_adamw_fused" for case in CASES),
    *(f"prox_eager_{case}_vs_adamw_fused" for case in CASES),
    *(f"prox_{case}_bandwidth_fraction" for case in CASES),
    "prox_adaptive_vs_adamw_fused",
    "adamw_default_vs_adamw_fused",
    "adamw_fused_bandwidth_fraction",
    "prox_share_of_training_step",
}


def test_dry_run_writes_every_key_of_the_gpu_check(tmp_path):
    out = tmp_path / "gpu-check.json"
    command = [sys.executable, "scripts/gpu_check.py", "--dry-run", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "a dry run on the CPU" in done.stdout
    result = json.loads(out.read_text())
    assert result.keys() == {
        "device",
        "dry_run",
        "torch",
        "triton",
        "stages",
        "targets",
        "optimizer_step",
        "training_step",
        "device_name",
        "peak_bandwidth_bytes_per_s",
        "peak_bandwidth_source",
        "prox_host_syncs_per_step",
        *FIGURES,
    }
    assert (result["device"], result["dry_run"]) == ("cpu", True)
    tests, bench = result["stages"]["tests"], result["stages"]["bench"]
    assert tests["outcome"] == "passed" and tests["exit_code"] == 0, "gpu tests skipped"
    assert tests["seconds"] > 0 and bench["seconds"] > 0 and "error" not in bench
    assert all(result[key] > 0 for key in FIGURES - {"prox_share_of_training_step"})
    assert result["prox_host_syncs_per_step"] is None, "counted on CUDA only"
    assert result["peak_bandwidth_source"].startswith("measured: copy of")
    assert result["targets"].keys() == TARGETS
    for key, target in result["targets"].items():
        assert target["value"] == result[key]
    step = result["optimizer_step"]
    assert step["bytes_per_step"] == 7 * 4 * step["params"], "7 float32 passes per weight"
    assert (
        step["ms"].keys() == step["bandwidth_fraction"].keys() == step["host_syncs_per_step"].keys()
    )
