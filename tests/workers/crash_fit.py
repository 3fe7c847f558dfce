"""Worker for test_crash_resume: `nyu_fit` (tests/helpers.py) in a process that may be killed.

Run as `python tests/workers/crash_fit.py KIND DATA OUT [--workers N] [--crash-at STEP]
[--resume CKPT]`: `crash_at=STEP` SIGKILLs the process as the batch of global step STEP starts;
a fit that ends saves its result as OUT/result.pt.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import nyu_fit


class CrashAt(L.Callback):
    """SIGKILL (no clean-up, no last save) as the batch of global step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["mtl", "compaction", "meta"])
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--resume")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small, busy CPU: no oversubscription
    callbacks = [] if args.crash_at is None else [CrashAt(args.crash_at)]
    result = nyu_fit(args.kind, args.data, args.out, args.workers, callbacks, args.resume)
    torch.save(result, args.out / "result.pt")


if __name__ == "__main__":
    main()
