"""The backbones part: per backbone, its params and MACs at the bench's image size, the
compaction error with a random half of every grouped conv's input groups zeroed, and one training
step of the seg + depth + normal model against the same step on the reference dilated ResNet."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from lightning_mtl.benchmarks.compaction import zero_random_groups
from lightning_mtl.benchmarks.options import TASKS, BenchOptions
from lightning_mtl.benchmarks.timing import interleaved_ms, sync
from lightning_mtl.models import MultiTaskModel, build_backbone, build_head
from lightning_mtl.sparsity import ProxAdamW, compact, conv_weights, macs_and_params


def compare_backbones(
    names: Sequence[str],
    reference: str,
    image_size: int,
    batch_size: int,
    head_channels: int,
    device: torch.device,
    rounds: int,
) -> list[dict]:
    """One row per backbone (`reference` first): `params` and `macs` of the backbone on one
    image, `output_stride`, `max_abs_diff` and `max_abs_output` of the compacted vs the sparse
    model (eval mode, CPU), `step_ms` (median over `rounds` interleaved rounds) and `step_ratio`
    (against the reference)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=gen)
    targets = {
        k: torch.randn(batch_size, c, image_size, image_size, generator=gen)
        for k, c in TASKS.items()
    }
    rows, steps = [], {}
    for name in dict.fromkeys([reference, *names]):
        torch.manual_seed(0)
        backbone = build_backbone(name)
        heads = {
            k: build_head("dense", backbone.out_channels, c, head_channels)
            for k, c in TASKS.items()
        }
        model = MultiTaskModel(backbone, heads)
        macs, params = macs_and_params(backbone, images[:1])
        with torch.no_grad():
            side = backbone.eval()(images[:1]).shape[-1]
        rows.append(
            {
                "backbone": name,
                "params": params,
                "macs": macs,
                "output_stride": image_size // side,
                **_compaction_error(model, images, gen),
            }
        )
        model.train()
        steps[name] = _training_step(model.to(device), images.to(device), targets, device)
    times = interleaved_ms(steps, rounds, 0.0)
    for row in rows:
        row["step_ms"] = times[row["backbone"]]
        row["step_ratio"] = row["step_ms"] / times[reference]
    return rows


@torch.no_grad()
def _compaction_error(model: MultiTaskModel, images: torch.Tensor, gen: torch.Generator) -> dict:
    """Max |compacted − sparse| over the outputs, half of every grouped conv's groups zeroed."""
    sparse = copy.deepcopy(model).eval()
    zero_random_groups(sparse.backbone, 0.5, gen)
    expected = sparse(images)
    compact(sparse, images[:1])
    actual = sparse(images)
    return {
        "max_abs_diff": max(float((actual[k] - e).abs().max()) for k, e in expected.items()),
        "max_abs_output": max(float(e.abs().max()) for e in expected.values()),
    }


def _training_step(
    model: MultiTaskModel, images: torch.Tensor, targets: dict, device: torch.device
) -> Callable[[], None]:
    """Forward, MSE losses, backward and a `ProxAdamW` step with the prox on the grouped convs;
    run once here so that the timed steps find the optimizer state allocated."""
    sparse = [w for _, w in conv_weights(model)]
    ids = {id(w) for w in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    opt = ProxAdamW([{"params": sparse, "lambda_": 1e-4}, {"params": dense}], eps=1e-6)
    targets = {k: t.to(device) for k, t in targets.items()}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        preds = model(images)
        sum(F.mse_loss(preds[k], targets[k]) for k in preds).backward()
        opt.step()
        sync(device)

    step()
    return step


def run(options: BenchOptions, device: torch.device, console: Console) -> dict:
    """Compare `options.backbones` with `options.backbone`, print the table;
    `{"backbones": rows of compare_backbones}`."""
    rows = compare_backbones(
        options.backbones,
        options.backbone,
        options.image_size,
        options.batch_size,
        options.head_channels,
        device,
        options.rounds,
    )
    table = Table(
        title=f"backbones, {options.image_size}², {device.type}, {torch.get_num_threads()} threads",
        caption=f"params and MACs of the backbone (one image); compaction with half of every "
        f"grouped conv's input groups zeroed; training step: batch {options.batch_size}, "
        f"seg+depth+normal heads of {options.head_channels} channels, ProxAdamW",
    )
    table.add_column("backbone", no_wrap=True, min_width=max(len(r["backbone"]) for r in rows))
    for column in ("stride", "params", "GMACs", "compaction |Δ| / max|y|", "step ms", "step ratio"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["backbone"],
            str(r["output_stride"]),
            f"{r['params']:,}",
            f"{r['macs'] / 1e9:.2f}",
            f"{r['max_abs_diff']:.1e} / {r['max_abs_output']:.1f}",
            f"{r['step_ms']:.0f}",
            f"{r['step_ratio']:.2f}×",
        )
    console.print(table)
    return {"backbones": rows}
