"""The one way anything is timed: medians of `torch.utils.benchmark.Timer`, compared statements
in interleaved rounds (so that drifting machine load hits them alike), a step timer for
Lightning fits, a stopwatch for work that runs once, and a counter of the host syncs a CUDA
statement makes."""

from __future__ import annotations

import functools
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from types import TracebackType

import lightning as L
import torch
from torch import nn
from torch.utils.benchmark import Timer

#: measures one statement: (statement, min_run_time in s) → ms
Measure = Callable[[Callable[[], object], float], float]


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], min_run_time: float) -> float:
    """Median ms of `fn()` over `Timer.blocked_autorange` blocks of at least `min_run_time` s,
    with torch's current intra-op threads (`Timer` would otherwise time with one). `Timer`
    waits for the accelerator at both ends of a block, so `fn` need not: CUDA statements are
    timed back to back, as a training loop queues them."""
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def interleaved_ms(
    fns: Mapping[str, Callable[[], object]],
    rounds: int,
    min_run_time: float,
    measure: Measure = median_ms,
) -> dict[str, float]:
    """Per statement, the median over `rounds` rounds of `measure(fn, min_run_time)`; each round
    measures every statement once, in the order given."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(measure(fn, min_run_time))
    return {name: statistics.median(values) for name, values in times.items()}


def host_syncs_per_step(
    fn: Callable[[], object], device: torch.device, steps: int = 3
) -> float | None:
    """Mean number of times a call of `fn()` makes the host wait for the CUDA device (torch's
    sync debug mode warns at each: `.item()`, `bool()` of a tensor, device→host copies, …);
    None off CUDA, where there is no device to wait for."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught) / steps


def latency_ms(
    models: Mapping[str, nn.Module], x: torch.Tensor, rounds: int = 5, min_run_time: float = 0.2
) -> dict[str, float]:
    """Median inference latency (ms) of each model on `x` (`interleaved_ms`, inference mode)."""
    with torch.inference_mode():
        fns = {key: functools.partial(model, x) for key, model in models.items()}
        return interleaved_ms(fns, rounds, min_run_time)


class Stopwatch:
    """Wall-clock seconds of a `with` block, for work that runs once and cannot be repeated as
    `median_ms` repeats a statement (a loader's epoch, a whole fit):
    `with Stopwatch() as watch: ...`, then `watch.seconds`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start


class StepTimer(L.Callback):
    """ms of every training batch: `training_step` and, under automatic optimization,
    Lightning's backward and optimizer step (all that happens between the two hooks)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        sync(self.device)
        self.times.append(1e3 * (time.perf_counter() - self._start))
