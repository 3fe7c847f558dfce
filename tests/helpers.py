"""Test helpers: the tiny settings, factories of tiny models, data and Trainers, the fits the
subprocess workers (tests/workers/) share with the tests, registry restoring, and readers of
offline W&B run files. Tests import from here; no test imports another test module."""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torchmetrics import MetricCollection

from datamodules import NYUv2DataModule, SyntheticDataModule
from datamodules.meta import MetaTaskDataModule
from datamodules.nyuv2 import FORMATS
from lightning_mtl import MetaSparsityModule, MultiTaskLightningModule, ProxAdamW
from lightning_mtl.callbacks import TrainTimeCompaction
from lightning_mtl.lomt import LayerOptimizedModel
from lightning_mtl.metrics import MeanOfValues
from lightning_mtl.models.backbone import BACKBONES, build_backbone
from lightning_mtl.models.builder import build_multitask_model
from lightning_mtl.models.heads import HEADS
from lightning_mtl.models.multitask import MultiTaskModel
from lightning_mtl.registry import Registry
from lightning_mtl.sparsity.operators import PROX_OPERATORS
from lightning_mtl.targets import TARGET_KINDS
from lightning_mtl.tasks import TASK_REGISTRY, Task
from lightning_mtl.weighting import WEIGHTINGS

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record

ROOT = Path(__file__).resolve().parents[1]
#: the scripts tests run as subprocesses: `python tests/workers/NAME.py ARGS…`, from ROOT
WORKERS = ROOT / "tests" / "workers"

#: genuine NYU-v2 frames (see its SOURCES.md): RGB, depth in millimetres, 13-class labels
REAL_NYUV2 = ROOT.parent / "shared" / "data" / "nyuv2-real-samples"
#: nyu2_mini_test/image_i.png is the i-th of these labeled frames (SOURCES.md §1c)
REAL_FRAMES = ("0001", "0002", "0009", "0014", "0015", "0016", "0017", "0018", "0021", "0028")

# -- tiny settings -------------------------------------------------------------------------------

TASKS = ("seg", "depth", "normal")
#: A dilated ResNet-18 with one block per stage at width 8: the real architecture, tiny.
TINY_BACKBONE = {"width": 8, "layers": [1, 1, 1, 1]}
TINY_MODEL = {"backbone": "resnet18", "backbone_options": TINY_BACKBONE, "head_channels": 8}
TINY_DATA = {"image_size": (32, 32), "batch_size": 4, "num_train": 16, "num_val": 8, "num_test": 8}
#: the data meta-batches are drawn from: 16×16 images, every synthetic target
TINY_META_DATA = {**TINY_DATA, "image_size": (16, 16), "num_val": 4, "num_test": 4}
#: 4 meta-batches per epoch of 2 meta-tasks with 4 support and 4 query samples each
TINY_META = {"meta_batch_size": 2, "support_size": 4, "query_size": 4, "meta_batches_per_epoch": 4}
#: `lightning-mtl meta` arguments that shrink experiments/meta/synthetic.yaml to seconds
TINY_META_ARGS = [
    "--model.backbone_options", "{width: 8, layers: [1, 1, 1, 1]}",
    "--model.head_channels", "8",
    "--data.init_args.meta_batch_size", "2",
    "--data.init_args.support_size", "4",
    "--data.init_args.query_size", "4",
    "--data.init_args.meta_batches_per_epoch", "2",
    "--data.init_args.datamodule.init_args.image_size", "[32, 32]",
    "--data.init_args.datamodule.init_args.batch_size", "4",
    "--data.init_args.datamodule.init_args.num_workers", "0",
    "--data.init_args.datamodule.init_args.synthesize", "12",
    "--trainer.max_epochs", "1",
    "--trainer.log_every_n_steps", "1",
    "--trainer.callbacks", "[]",
    "--meta_test.epochs", "1",
]  # fmt: skip
#: a strong outer prox and a weak inner one: some groups die and λ gets a gradient
META_PRUNING = {
    "lambda_init": 1.0,
    "inner_lr": 1e-3,
    "rho_lr": 0.05,
    "optimizer": functools.partial(ProxAdamW, lr=0.05),
}
#: the tiny model, data and one-epoch trainer as `lightning-mtl fit` options
TINY_CLI = [
    "--model.backbone_options", "{width: 8, layers: [1, 1, 1, 1]}",
    "--model.head_channels", "8",
    "--data.init_args.image_size", "[32, 32]",
    "--data.init_args.batch_size", "4",
    "--data.init_args.num_workers", "0",
    "--trainer.max_epochs", "1",
    "--trainer.log_every_n_steps", "1",
    "--trainer.callbacks", "[]",
]  # fmt: skip

#: quiet single-process CPU runs
TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 1,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
#: the 2-process CPU DDP runs of the workers
DDP_TRAINER = {
    **TRAINER,
    "devices": 2,
    "strategy": "ddp",
    "max_epochs": 2,
    "enable_checkpointing": False,
}

# -- factories -----------------------------------------------------------------------------------


def tiny_backbone(name: str = TINY_MODEL["backbone"], **overrides: Any) -> nn.Module:
    """The registered backbone `name` at the tiny width and depth (`overrides`: its options)."""
    return build_backbone(name, **{**TINY_BACKBONE, **overrides})


def tiny_model(tasks: Mapping[str, Task], **overrides: Any) -> MultiTaskModel | LayerOptimizedModel:
    """`build_multitask_model` of `tasks` on the tiny backbone (`overrides`: its arguments)."""
    return build_multitask_model(tasks, **{**TINY_MODEL, **overrides})


def tiny_datamodule(tasks: Iterable[str] | None = TASKS, **overrides: Any) -> SyntheticDataModule:
    """Tiny synthetic data (`tasks=None`: every target)."""
    return SyntheticDataModule(
        tasks=None if tasks is None else list(tasks), **{**TINY_DATA, **overrides}
    )


def tiny_module(
    datamodule: L.LightningDataModule, tasks: Iterable[str] = TASKS, **overrides: Any
) -> MultiTaskLightningModule:
    """A `MultiTaskLightningModule` of the tiny model on `datamodule`'s targets."""
    return MultiTaskLightningModule(
        tasks=list(tasks), targets=datamodule.targets, **{**TINY_MODEL, **overrides}
    )


def tiny_meta_datamodule(tasks: Iterable[str] = TASKS, **overrides: Any) -> MetaTaskDataModule:
    """Tiny meta-batches (`overrides`: `MetaTaskDataModule` options) of tiny synthetic data."""
    wrapped = tiny_datamodule(None, **TINY_META_DATA)
    return MetaTaskDataModule(wrapped, tasks=list(tasks), **{**TINY_META, **overrides})


def tiny_meta_module(
    datamodule: L.LightningDataModule, tasks: Iterable[str] = TASKS, **overrides: Any
) -> MetaSparsityModule:
    """A `MetaSparsityModule` of the tiny model on `datamodule`'s targets."""
    return MetaSparsityModule(
        tasks=list(tasks), targets=datamodule.targets, **{**TINY_MODEL, **overrides}
    )


def tiny_trainer(tmp_path: Path | None = None, **overrides: Any) -> L.Trainer:
    """A quiet CPU Trainer (`TRAINER`, then `overrides`) rooted at `tmp_path`."""
    root = {} if tmp_path is None else {"default_root_dir": tmp_path}
    return L.Trainer(**{**TRAINER, **root, **overrides})


def sparse_checkpoint(root: Path) -> tuple[MultiTaskLightningModule, Path]:
    """A tiny module trained one epoch with a strong prox, and its checkpoint root/sparse.ckpt."""
    data = tiny_datamodule()
    module = tiny_module(data, lambda_=0.5, optimizer=functools.partial(ProxAdamW, lr=1e-2))
    trainer = tiny_trainer(root)
    trainer.fit(module, data)
    path = root / "sparse.ckpt"
    trainer.save_checkpoint(path)
    return module, path


def write_real_nyuv2_png(root: Path, splits: Mapping[str, Iterable[int]]) -> Path:
    """The genuine frames `REAL_FRAMES[i]` of each split (split → indices i) in the NYU-v2 png
    layout at `root` (rgb, depth, labels_13)."""
    for split, indices in splits.items():
        for i in indices:
            frame = REAL_FRAMES[i]
            sources = {
                "rgb": REAL_NYUV2 / "nyu2_mini_test" / f"image_{i}.png",
                "depth": REAL_NYUV2 / "nyu2_mini_test" / f"depth_{i}.png",
                "labels_13": REAL_NYUV2 / "test_labels_13" / f"new_nyu_class13_{frame}.png",
            }
            for folder, source in sources.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, root / split / folder / f"{frame}.png")
    return root


def assert_same_run(a: tuple, b: tuple) -> None:
    """Two (module, trainer) fits ended in the same state (`assert_same_state`)."""
    (module_a, trainer_a), (module_b, trainer_b) = a, b
    assert_same_state(
        *(
            {
                "state_dict": module.state_dict(),
                "optimizer": trainer.optimizers[0].state_dict(),
                "global_step": trainer.global_step,
            }
            for module, trainer in ((module_a, trainer_a), (module_b, trainer_b))
        )
    )


def assert_same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """Two fits' `{state_dict, optimizer, global_step}` are equal: every module tensor
    (weights, BN buffers, log-variances or ρ), the optimizer's param groups (lr, λ) and its
    state (step, exp_avg, exp_avg_sq)."""
    assert a["global_step"] == b["global_step"]
    state_a, state_b = a["state_dict"], b["state_dict"]
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        assert torch.equal(value, state_b[name]), name
    opt_a, opt_b = a["optimizer"], b["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for key, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][key][name]), (key, name)


def csv_logger(root: Path) -> CSVLogger:
    """A CSV logger writing root/metrics.csv."""
    return CSVLogger(root, name="", version="")


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """`count` intra-op threads meanwhile (on a small, busy CPU more make tiny fits slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- host syncs ----------------------------------------------------------------------------------

LIBRARY = ROOT / "lightning_mtl"


@dataclass
class HostSyncs:
    """The host syncs a counter saw: where each came from (the innermost `lightning_mtl` frame
    of its Python stack, "path:line function"; None for a sync outside any library call)."""

    origins: list[str | None] = field(default_factory=list)

    @property
    def library(self) -> list[str]:
        """The syncs made inside a call into `lightning_mtl` (its code or what it called)."""
        return [origin for origin in self.origins if origin is not None]


#: the Tensor methods that read values to the host (each is a device→host sync on CUDA)
_READ_METHODS = frozenset(
    {
        Tensor.item,
        Tensor.tolist,
        Tensor.__bool__,
        Tensor.__float__,
        Tensor.__int__,
        Tensor.__index__,
        Tensor.__format__,
    }
)


class _MethodReads(TorchFunctionMode):
    """Counts the calls of `_READ_METHODS` (seen under `torch.inference_mode` too, and for
    `.tolist()`, which reads a CPU tensor without `_local_scalar_dense`)."""

    def __init__(self, syncs: HostSyncs) -> None:
        super().__init__()
        self.syncs = syncs
        self.reading = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _READ_METHODS or self.reading:
            return func(*args, **(kwargs or {}))
        self.syncs.origins.append(_library_origin())
        self.reading = True
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.reading = False


class _OpReads(TorchDispatchMode):
    """Counts `aten._local_scalar_dense` (what reading one value lowers to) called from C++
    rather than through a method `_MethodReads` counted, e.g. a tensor used as an index.
    Blind under `torch.inference_mode` (inference tensors skip Python dispatch modes)."""

    def __init__(self, methods: _MethodReads) -> None:
        super().__init__()
        self.methods = methods

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.methods.reading:
            self.methods.syncs.origins.append(_library_origin())
        return func(*args, **(kwargs or {}))


def _library_origin() -> str | None:
    """The innermost `lightning_mtl` frame of the current Python stack, or None."""
    frame = sys._getframe()
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(LIBRARY):
            return f"{path.relative_to(ROOT)}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return None


@contextmanager
def count_scalar_reads() -> Iterator[HostSyncs]:
    """Record every host read of a tensor's values meanwhile (`.item()`, `bool()`, `float()`,
    `int()`, `.tolist()`): each is a device→host sync on CUDA, so counting them on CPU tells how
    often a step would stall the GPU. Not counted: reads from C++ (a tensor used as an index)
    under `torch.inference_mode`, and ops whose output shape depends on the values (`nonzero`,
    boolean-mask indexing), which sync on CUDA too."""
    syncs = HostSyncs()
    methods = _MethodReads(syncs)
    with methods, _OpReads(methods):
        yield syncs


@contextmanager
def count_cuda_syncs() -> Iterator[HostSyncs]:
    """Record every synchronizing CUDA operation meanwhile (`torch.cuda.set_sync_debug_mode`
    "warn": blocking copies either way, `.item()`, stream and device synchronizations), with
    the Python stack it was called from."""

    def record(message: Warning | str, category: type[Warning], *args: object) -> None:
        if "called a synchronizing CUDA operation" in str(message):
            syncs.origins.append(_library_origin())

    syncs = HostSyncs()
    mode = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield syncs
        finally:
            torch.cuda.set_sync_debug_mode(mode)


# -- registries ----------------------------------------------------------------------------------

REGISTRIES: tuple[Registry, ...] = (
    TASK_REGISTRY,
    WEIGHTINGS,
    PROX_OPERATORS,
    HEADS,
    BACKBONES,
    TARGET_KINDS,
    FORMATS,
)


@contextmanager
def restored_registries() -> Iterator[None]:
    """Unregister afterwards every name registered meanwhile in any of `REGISTRIES`."""
    before = [set(registry) for registry in REGISTRIES]
    try:
        yield
    finally:
        for registry, names in zip(REGISTRIES, before, strict=True):
            for name in set(registry) - names:
                registry.unregister(name)


class ForegroundAccuracy(MeanOfValues):
    """The share of labelled pixels whose foreground probability is on the right side of 0.5."""

    higher_is_better = True

    def values(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return ((preds > 0.5) == (target > 0)).float(), target != 255


class ForegroundTask(Task):
    """A user-defined task: foreground (any class but 0) vs background, from the `seg` labels."""

    higher_is_better: ClassVar[dict[str, bool]] = {"fg_acc": True}
    main_metric = "fg_acc"
    out_channels = 1

    def __init__(self, key: str = "fg", target_key: str = "seg") -> None:
        super().__init__(key, target_key)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        fg, labelled = (target > 0).float(), (target != 255).float()
        return F.binary_cross_entropy_with_logits(pred[:, 0], fg, weight=labelled)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"fg_acc": ForegroundAccuracy()})

    def metric_input(self, pred: Tensor) -> Tensor:
        return pred[:, 0].sigmoid()


# -- the fits of the subprocess workers ----------------------------------------------------------


def run_ddp_worker(name: str, out: Path, *args: str) -> tuple[dict, dict]:
    """Run the DDP worker `name` (`python tests/workers/NAME.py OUT ARGS…`; Lightning launches
    rank 1) and load what its two ranks saved as OUT/rank{0,1}.pt."""
    result = subprocess.run(
        [sys.executable, str(WORKERS / f"{name}.py"), str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def ddp_fit_setup() -> tuple[SyntheticDataModule, MultiTaskLightningModule]:
    """The data and module of the DDP fit (workers/ddp_fit.py; test_ddp rebuilds them to validate
    alone): 9 validation samples, on 2 ranks at batch size 4 5 (2 batches) and 4 (1 batch)."""
    data = tiny_datamodule(num_val=9)
    return data, tiny_module(data, lambda_=0.2, optimizer=functools.partial(ProxAdamW, lr=1e-2))


def nyu_fit(
    kind: str,
    data_root: str,
    out: Path,
    workers: int = 0,
    callbacks: Sequence[L.Callback] = (),
    resume: str | None = None,
) -> dict[str, Any]:
    """The fit of test_crash_resume (in-process or in workers/crash_fit.py): 2 epochs of
    `MultiTaskLightningModule` (KIND `mtl`; `compaction`: with a stronger prox and
    `TrainTimeCompaction` at the start of epoch 1) or `MetaSparsityModule` (`meta`) on
    augmented NYU-v2 files at `data_root`, checkpointing OUT/last.ckpt every 2 optimizer steps,
    from `resume` if given; the module's and optimizer's state dicts, the global step and the
    compaction plan at the end."""
    L.seed_everything(3)
    nyu = NYUv2DataModule(
        data_root,
        tasks=None if kind == "meta" else list(TASKS),
        batch_size=4,
        num_workers=workers,
        image_size=(32, 32),
        augment=True,
        val_fraction=0.2,
    )
    if kind in ("mtl", "compaction"):
        data = nyu
        lambda_ = 0.05 if kind == "mtl" else 0.3
        module = tiny_module(nyu, lambda_=lambda_, optimizer=functools.partial(ProxAdamW, lr=0.05))
        if kind == "compaction":
            callbacks = [*callbacks, TrainTimeCompaction(round_to=None)]
    else:
        data = MetaTaskDataModule(nyu, tasks=list(TASKS), **TINY_META, num_workers=workers)
        module = tiny_meta_module(data, **{**META_PRUNING, "lambda_init": 0.3})
    checkpoints = ModelCheckpoint(dirpath=out, every_n_train_steps=2, save_last=True)
    trainer = tiny_trainer(
        out, max_epochs=2, deterministic=True, callbacks=[checkpoints, *callbacks]
    )
    trainer.fit(module, data, ckpt_path=resume)
    return {
        "state_dict": module.state_dict(),
        "optimizer": trainer.optimizers[0].state_dict(),
        "global_step": trainer.global_step,
        "compaction_plan": module.compaction_plan.to_data(),
    }


# -- offline W&B run files -----------------------------------------------------------------------
# A run file (`run-<id>.wandb`) is a LevelDB-style log (W&B's datastore): a 7-byte header (":W&B",
# magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length,
# type FULL/FIRST/MIDDLE/LAST) and a piece of a serialised `wandb_internal_pb2.Record`.

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path, timeout: float = 120.0) -> list[Record]:
    """The records of a finished offline W&B run file. `run.finish()` can return before W&B's
    service has flushed the file (seen on a loaded machine), so this reads until the file ends
    with the run's exit record, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        out = _read_records(path)
        if (out and out[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def _read_records(path: Path) -> list[Record]:
    """The records an offline W&B run file holds now."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B run file"
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # block trailer padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _FIRST):
            pending = chunk
        elif kind in (_MIDDLE, _LAST):
            pending += chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def history_keys(path: Path) -> set[str]:
    """The keys the run logged history under."""
    keys = set()
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


def run_config(path: Path) -> tuple[dict, str]:
    """The run's config (as W&B received it, values decoded) and its group."""
    import json

    config, group = {}, ""
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group = record.run.run_group
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        else:
            continue
        for item in items:
            key = item.key or "/".join(item.nested_key)
            config[key] = json.loads(item.value_json)
    return config, group
