"""What `lightning-mtl bench` measures and at which sizes: one options dataclass for every part."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

#: the tasks of every part's model (NYU-v2's seg, depth, normal) and their output channels
TASKS: dict[str, int] = {"seg": 13, "depth": 1, "normal": 3}

#: what `lightning-mtl bench` can measure, in the order it runs them (`main.PARTS`: their code)
Part = Literal["prox", "data", "compaction", "meta", "backbones", "train_compaction"]
#: the parts a plain `lightning-mtl bench` (and `make bench`) runs
DEFAULT_PARTS: tuple[Part, ...] = ("prox", "data", "compaction", "meta")


@dataclass
class BenchOptions:
    """`lightning-mtl bench` options (`--config FILE`, `--print_config`).

    Args:
        parts: the parts to run (`--parts prox compaction`; always in `Part`'s order): prox,
            data, compaction, meta, backbones, train_compaction.
        backbone: the dilated ResNet of the prox, data and compaction parts, and the reference
            of the backbones part.
        image_size: side of the square inputs.
        batch_size: batch of the training steps.
        head_channels: channels of the seg, depth and normal heads.
        precision: the prox part's training step in float32 (`32-true`) or under bfloat16
            autocast (`bf16-mixed`; the parameters, gradients and optimizer stay float32).
        channels_last: the prox part's training step with the model and inputs in the
            channels_last memory format.
        data_size: (H, W) of the data part's images.
        data_workers: loader worker processes of the data part.
        data_images: synthetic NYU-v2 images of the data part.
        plot: where the compaction part writes its latency plot.
        checkpoint: a trained checkpoint: the compaction part also compacts its backbone (a
            trained profile).
        compaction_round_to: the compaction part's rounded widths (`compact(round_to=...)`),
            measured next to exact compaction.
        device: where everything runs.
        rounds: interleaved timing rounds.
        min_run_time: seconds per timing.
        meta_backbone: the meta part's own (smaller) model: meta-sparsity outer step vs MTL step.
        meta_width: stem/first-stage channels (ResNet: 64).
        meta_layers: blocks per stage (ResNet-50: [3, 4, 6, 3]).
        meta_head_channels: channels of the meta part's heads.
        meta_image_size: side of the meta part's square inputs.
        meta_batch_size: b: MTL batch = support = query size.
        meta_configs: outer steps to time, BxK[fo]: B meta-tasks x K inner steps, `fo` = first
            order.
        meta_warmup: untimed steps per config.
        meta_rounds: timed steps per config.
        backbones: the backbones part's backbones (registered names), compared with `backbone`.
        train_compaction_config: the train_compaction part's config, fitted with and without
            `TrainTimeCompaction` (the config's trainer callbacks).
        train_compaction_seeds: its seeds (one run with and one without each).
        train_compaction_args: extra `lightning-mtl fit` arguments of its runs.
        json: also write the result to this JSON file: every part's figures, one top-level
            key each (`prox_adaptive_vs_adamw_fused`, `compaction_latency_vs_macs_trained`,
            …), next to its raw measurements (`optimizer_step`, `compaction`, …).
    """

    parts: list[Part] = field(default_factory=lambda: list(DEFAULT_PARTS))
    backbone: str = "resnet50"
    image_size: int = 256
    batch_size: int = 2
    head_channels: int = 256
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    channels_last: bool = False
    data_size: tuple[int, int] = (288, 384)
    data_workers: int = 2
    data_images: int = 64
    plot: str = "latency_vs_sparsity.png"
    checkpoint: str | None = None
    compaction_round_to: int = 8
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    rounds: int = 5
    min_run_time: float = 1.0
    meta_backbone: str = "resnet50"
    meta_width: int = 16
    meta_layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    meta_head_channels: int = 64
    meta_image_size: int = 48
    meta_batch_size: int = 2
    meta_configs: list[str] = field(default_factory=lambda: ["2x1", "4x1", "2x2", "2x1fo"])
    meta_warmup: int = 1
    meta_rounds: int = 3
    backbones: list[str] = field(
        default_factory=lambda: [
            "convnext_tiny",
            "mobilenet_v3_large",
            "efficientnet_b0",
            "regnet_y_800mf",
            "resnext50_32x4d",
            "wide_resnet50_2",
        ]
    )
    train_compaction_config: str = "experiments/train-compaction.yaml"
    train_compaction_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_compaction_args: list[str] = field(default_factory=list)
    json: str | None = None
