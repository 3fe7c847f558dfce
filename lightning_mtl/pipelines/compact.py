"""`lightning-mtl compact`: a checkpoint's model with its zero channel groups removed, saved and
optionally exported (TorchScript, ONNX)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_mtl.models.compacted import save_compacted
from lightning_mtl.modules import MultiTaskLightningModule
from lightning_mtl.sparsity import CompactionReport, compact, export_onnx, export_torchscript


@dataclass(frozen=True)
class Compacted:
    """What `compact_checkpoint` removed and the files it wrote."""

    report: CompactionReport
    files: list[Path]


def compact_checkpoint(
    ckpt: Path,
    out: Path,
    image_size: tuple[int, int] = (256, 256),
    torchscript: bool = False,
    onnx: bool = False,
    round_to: int | None = 8,
) -> Compacted:
    """Remove the zero channel groups of a checkpoint's model; save it, and optionally export it.

    Args:
        ckpt: a MultiTaskLightningModule checkpoint.
        out: output folder (`model.pt`: architecture, compaction plan and weights, read by
            `load_compacted` with `torch.load(weights_only=True)`; `model.ts`, `model.onnx`
            when exported).
        image_size: input size (H, W) of the traced example image.
        torchscript: also write `model.ts` (TorchScript).
        onnx: also write `model.onnx`.
        round_to: keep every compacted channel count a multiple of this (a few zero channels
            stay; faster on CPUs and GPUs than odd widths); `null` or 1: remove every dead one.
    """
    module = MultiTaskLightningModule.load_from_checkpoint(ckpt, map_location="cpu")
    model = module.model.eval()
    example = torch.rand(1, 3, *image_size)
    report = compact(model, example, round_to=round_to)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "model.pt"]
    # a checkpoint of train-time compaction is compacted already: the file's plan is both
    plan = module.compaction_plan.compose(report.plan)
    save_compacted(model, files[-1], spec=module.model_spec, plan=plan)
    if torchscript:
        files.append(out / "model.ts")
        export_torchscript(model, files[-1], example)
    if onnx:
        files.append(out / "model.onnx")
        export_onnx(model, files[-1], example)
    return Compacted(report, files)
