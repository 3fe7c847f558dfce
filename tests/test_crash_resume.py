"""A real fit SIGKILLed mid-epoch and resumed from its last checkpoint ends bit-identical to an
uninterrupted fit: weights, BN statistics, uncertainty weights, λ (ρ), Adam's moments and step,
and so the zero-group pattern.

The killed fit (`nyu_fit` in tests/workers/crash_fit.py, a subprocess) checkpoints every 2
optimizer steps of 4-batch epochs and dies as step 3 starts, so the checkpoint is mid-epoch 0 (2
of its batches done) and step 2's work is lost; a new process resumes it to the end of epoch 1.
Each of these is needed and was checked to break the equality when left out: skipping the
batches the checkpoint had done (Lightning restarts the epoch's loader; `ResumableSampler.skip`),
per-sample augmentation seeds (the transform's stream would otherwise restart with the process;
`sample_seeds`) and the checkpointed global RNG streams (head dropout;
`MultiTaskLightningModule.on_save_checkpoint`). The uninterrupted fit runs in-process,
meanwhile, with `num_workers=0`; the meta case resumes with a loader worker process, so its
batches are also independent of `num_workers`.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from datamodules.nyuv2 import write_synthetic_nyuv2
from datamodules.sampling import ResumableSampler
from lightning_mtl.sparsity import live_groups
from tests.helpers import ROOT, WORKERS, assert_same_state, nyu_fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """20 train scenes (16 after the validation split: 4 batches of 4) and 2 test scenes."""
    root = tmp_path_factory.mktemp("nyuv2") / "mtan"
    return str(write_synthetic_nyuv2(root, "mtan", 20, 2, (32, 32)))


def _worker(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKERS / "crash_fit.py"), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _wait(process: subprocess.Popen) -> int:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode in (0, -signal.SIGKILL), stderr[-4000:]
    return process.returncode


def _zero_groups(state_dict: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    convs = [v for k, v in state_dict.items() if k.startswith("model.backbone.") and v.dim() == 4]
    return [~live_groups(w, "in_channel") for w in convs]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "workers"), [("mtl", 0), ("meta", 1)])
def test_killed_mid_epoch_resumes_exactly(kind, workers, nyu_root, tmp_path):
    crashed = _worker(kind, nyu_root, tmp_path / "crashed", "--workers", workers, "--crash-at", 3)
    straight = nyu_fit(kind, nyu_root, tmp_path / "straight")
    assert _wait(crashed) == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (tmp_path / "crashed").glob("*.ckpt"))
    assert checkpoints == ["epoch=0-step=2.ckpt", "last.ckpt"]
    resume = str(tmp_path / "crashed" / "last.ckpt")
    assert (
        _wait(
            _worker(kind, nyu_root, tmp_path / "crashed", "--workers", workers, "--resume", resume)
        )
        == 0
    )
    resumed = torch.load(tmp_path / "crashed" / "result.pt")

    assert straight["global_step"] == resumed["global_step"] == 8
    assert_same_state(straight, resumed)
    dead = _zero_groups(straight["state_dict"])
    assert all(
        torch.equal(a, b) for a, b in zip(dead, _zero_groups(resumed["state_dict"]), strict=True)
    )
    assert 0 < sum(int(d.sum()) for d in dead) < 243  # some, not all, of the 243 groups died


def test_sampler_order_is_a_function_of_seed_and_epoch_and_skips_done_indices():
    sampler = ResumableSampler(range(10), seed=5, sample_seeds=True)
    sampler.set_epoch(1)
    first = list(sampler)
    assert list(sampler) == first  # nothing drawn from a stream that moves on
    assert sorted(i for i, _ in first) == list(range(10))
    assert len({seed for _, seed in first}) == 10
    other = ResumableSampler(range(10), seed=5, sample_seeds=True)
    other.set_epoch(2)
    assert list(other) != first
    other.skip(1, 4)  # only epoch 1 skips, and len stays the epoch's (Lightning counts on)
    assert list(other) != first[4:]
    other.set_epoch(1)
    assert list(other) == first[4:] and len(other) == 10
    ranks = [ResumableSampler(range(10), 2, rank, seed=5) for rank in (0, 1)]
    assert sorted(i for r in ranks for i in r) == list(range(10))


def test_augmentation_is_a_function_of_the_sample_seed(nyu_root):
    from datamodules import NYUv2DataModule

    data = NYUv2DataModule(nyu_root, tasks=["seg", "depth"], image_size=(32, 32), augment=True)
    data.setup("fit")
    train = data.datasets["train"]
    a = train[3, 7]
    train[3, 8], train[5], train[3]  # whatever was drawn in between
    b = train[3, 7]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], train[3, 8]["image"])


@pytest.mark.slow
def test_killed_after_a_train_time_compaction_resumes_exactly(nyu_root, tmp_path):
    """Compacted at the start of epoch 1, killed as its third batch starts: the mid-epoch
    checkpoint holds the compacted model, and the resumed fit rebuilds it and ends as the
    uninterrupted one."""
    crashed = _worker("compaction", nyu_root, tmp_path / "crashed", "--crash-at", 6)
    straight = nyu_fit("compaction", nyu_root, tmp_path / "straight")
    assert _wait(crashed) == -signal.SIGKILL
    last = tmp_path / "crashed" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 6 and checkpoint["compaction_plan"], "mid-epoch, compacted"
    assert _wait(_worker("compaction", nyu_root, tmp_path / "crashed", "--resume", last)) == 0
    resumed = torch.load(tmp_path / "crashed" / "result.pt")

    assert straight["global_step"] == resumed["global_step"] == 8
    assert straight["compaction_plan"] == resumed["compaction_plan"]
    assert_same_state(straight, resumed)
