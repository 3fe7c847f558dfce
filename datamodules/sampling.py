"""Train samplers that make a resumed run, even one resumed mid-epoch, continue exactly.

A checkpoint written mid-epoch (`ModelCheckpoint(every_n_train_steps=…)`, or a crash after one)
resumes at the next batch of that epoch, but Lightning rebuilds the epoch's loader from its
start. `ResumableSampler` therefore draws an epoch's order from `(seed, epoch)` only, not from
the global RNG, and can leave out the batches the checkpointed run already trained on; with
`sample_seeds` it yields `(index, seed)` pairs whose seed, a pure function of
`(seed, epoch, index)`, reseeds that sample's augmentation (`MultiTaskDataset` takes such
pairs), so what a batch holds does not depend on `num_workers` or on where a run started.

`ResumableTrainLoader` is the datamodule side: its `state_dict` (which Lightning saves in every
checkpoint and hands back on resume) holds the sampler seed and how far the fit got, read from
the trainer's own progress counters at save time, and `train_sampler` builds the sampler that
skips accordingly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler


def sample_seed(*keys: int) -> int:
    """A 32-bit seed that is a pure function of `keys` (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """This rank's indices for an epoch as a pure function of `(seed, epoch)` (a shuffled, or
    with `shuffle=False` ordered, `DistributedSampler` order), optionally as `(index, seed)`
    pairs (`sample_seeds`), minus the first `count` of one epoch after `skip(epoch, count)`.

    A `DistributedSampler` so that Lightning keeps it under DDP (`num_replicas` and `rank` are
    explicit, so it works without `torch.distributed`) and calls `set_epoch` on it. `len` stays
    the full epoch's length while skipping: Lightning counts the resumed epoch's batches from
    where the checkpoint left off and ends it after the last one.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        sample_seeds: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.sample_seeds = sample_seeds
        self.skipped: tuple[int, int] = (0, 0)

    def skip(self, epoch: int, count: int) -> None:
        """Leave out the first `count` indices of this rank whenever `epoch` is iterated."""
        self.skipped = (int(epoch), max(0, int(count)))

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, nothing skipped."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[Any]:
        # a generator: DataLoader calls iter() on its sampler twice when it starts worker
        # processes, and only the iterator it advances should do any work
        epoch, count = self.skipped
        for index in self.indices()[count if epoch == self.epoch else 0 :]:
            yield (index, sample_seed(self.seed, self.epoch, index)) if self.sample_seeds else index


def fit_progress(trainer: Any) -> dict[str, int]:
    """`epoch`: the epoch a fit is in (or about to start); `batches_done`: its train batches
    already trained on, 0 once its training part is over (the next epoch then starts afresh).

    Read at checkpoint time: in `on_train_batch_end` (`ModelCheckpoint(every_n_train_steps)`)
    and in a mid-epoch validation the batch in hand counts as processed, and at the end of an
    epoch (`on_train_epoch_end`, or the validation after its last batch) all of them do. Under
    gradient accumulation a checkpoint between two optimizer steps loses the gradients
    accumulated so far (Lightning does not save them); `every_n_train_steps` saves on steps.
    """
    loop = trainer.fit_loop
    done = loop.epoch_loop.batch_progress.current.processed
    if done >= trainer.num_training_batches:
        done = 0
    return {"epoch": loop.epoch_progress.current.processed, "batches_done": done}


class ResumableTrainLoader:
    """Datamodule mixin: checkpoints the train sampler's position and resumes from it.

    The sampler seed is `seed_everything`'s (`PL_GLOBAL_SEED`, 0 without it), the one Lightning
    gives the samplers it injects under DDP, so every rank draws the same permutation; a resumed
    run keeps the seed of its checkpoint.
    """

    trainer: Any
    _train_resume: dict[str, int] | None = None
    _sampler_seed: int | None = None

    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None or self._sampler_seed is None:
            return {}
        return {"train_sampler": {"seed": self._sampler_seed, **fit_progress(self.trainer)}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_resume = state_dict.get("train_sampler")

    def train_sampler(
        self, sampler_type: type[ResumableSampler], dataset: Sized, per_batch: int, **kwargs: Any
    ) -> ResumableSampler:
        """A `sampler_type(dataset, num_replicas, rank, seed=…, **kwargs)` at the epoch the
        trainer is in (Lightning builds, and prefetches from, the first iterator before it calls
        `set_epoch`, and a resumed run trains its first epoch on it) that skips the
        `per_batch` indices of each batch a loaded checkpoint had done in that epoch."""
        resume, self._train_resume = self._train_resume or {}, None
        self._sampler_seed = int(resume.get("seed", os.environ.get("PL_GLOBAL_SEED", 0)))
        trainer = self.trainer  # a datamodule's trainer is a plain attribute, None until fit
        world, rank = (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)
        sampler = sampler_type(dataset, world, rank, seed=self._sampler_seed, **kwargs)
        if trainer is not None:
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        if resume:
            sampler.skip(resume["epoch"], resume["batches_done"] * per_batch)
        return sampler
