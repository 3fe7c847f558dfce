"""The Triton kernel of `ProxAdamW` (CUDA): the AdamW update and the prox, many convs per launch.

One program takes a tile of groups of one weight. A weight is read as [R, G, K] with the groups
on the middle axis: input-channel groups of an [O, I, kh, kw] weight are (R, G, K) = (O, I,
kh·kw) — a segmented reduction over the output rows and the kernel positions — and output-channel
groups (and the elementwise l1) are (1, O, I·kh·kw); the strides make channels_last weights
work too. The first pass streams the tile once (Adam update, the weight holds z) and sums each
group's Σz² (and Σz²c in a metric); the adaptive prox's Newton steps re-read z and Adam's v
(L2-resident on a GPU) and the last pass scales z in place. The Newton loop stops on the device
once every group of the tile has converged to the eager path's tolerance (at most
`MAX_NEWTON_STEPS`): no host synchronisation anywhere in the step.

Every weight of a launch shares a dtype, the options and the tile shape: `adamw_prox_` sorts
the weights into launches by tile shape (about three for a ResNet: 1×1, 3×3, 7×7 convs) and
passes each launch its weights' pointers, sizes and per-weight constants in one small table.
On CPU tensors the kernel runs in Triton's interpreter (`TRITON_INTERPRET=1`): that is how the
suite tests it against the eager path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_mtl.sparsity.groups import group_size
from lightning_mtl.sparsity.operators.group_lasso import MAX_NEWTON_STEPS

#: dtypes the kernel takes (weights, gradients and state alike)
DTYPES = (torch.float32, torch.float64)
#: a tile holds about this many elements per loaded tensor; rows are cut into segments of
#: about `TILE_WIDTH` contiguous elements (≥ 128 bytes per row segment in float32)
TILE_ELEMENTS = 1024
TILE_WIDTH = 64


def interpreter_enabled() -> bool:
    """Whether Triton kernels run on CPU tensors here (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernel cannot run on `device`'s tensors here, or None."""
    if device.type == "cpu" and not interpreter_enabled():
        return (
            "the Triton kernel runs on CUDA tensors (on CPU tensors only under TRITON_INTERPRET=1)"
        )
    if device.type not in ("cpu", "cuda"):
        return f"the Triton kernel runs on CUDA tensors, not {device.type}"
    try:
        from lightning_mtl.sparsity.kernels import triton_program
    except ImportError as error:
        return f"the Triton kernel needs the triton package ({error})"
    if device.type == "cpu" and not triton_program.INTERPRETED:
        return (
            "TRITON_INTERPRET=1 was set after triton was imported: set it before the process "
            "imports lightning or triton"
        )
    return None


def unsupported(param: Tensor, *tensors: Tensor) -> str | None:
    """Why the kernel cannot update `param` with its gradient and state `tensors`, or None."""
    reason = unavailable_reason(param.device)
    if reason is not None:
        return reason
    if param.dtype not in DTYPES:
        return f"the Triton kernel takes float32 and float64 weights, not {param.dtype}"
    layout = _layout(param)
    if layout is None or not all(
        t.dtype == param.dtype
        and t.shape == param.shape
        and t.device == param.device
        and _layout(t) == layout
        for t in tensors
    ):
        return (
            "the Triton kernel needs contiguous or channels_last weights whose gradients and "
            "state share their dtype and strides"
        )
    return None


def _layout(param: Tensor) -> str | None:
    """`"contiguous"`, `"channels_last"` or None (any other strides) for a 4-D weight (the
    strides of size-1 dimensions do not matter: a 1×1 conv's are both)."""
    if param.is_contiguous():
        return "contiguous"
    if param.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return None


def _view(param: Tensor, grouped_by_input: bool) -> tuple[int, int, int, int, int]:
    """(R, G, K, stride of G, stride of K) of the weight read as [R, G, K]; the stride of R is
    G·K in every case. Input-channel groups: element (o, i, k) sits at o·I·K + i·K + k, or at
    o·K·I + k·I + i in channels_last; output-channel groups: whole rows, contiguous in both."""
    out_ch, in_ch, kh, kw = param.shape
    kernel = kh * kw
    if not grouped_by_input:
        return 1, out_ch, in_ch * kernel, in_ch * kernel, 1
    if _layout(param) == "channels_last":
        return out_ch, in_ch, kernel, 1, in_ch
    return out_ch, in_ch, kernel, kernel, 1


def _power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _tile(rows: int, groups: int, kernel: int, groups_adjacent: bool) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_G, BLOCK_K): the axis with unit stride (G when `groups_adjacent`, else
    K) gets up to `TILE_WIDTH` lanes (all of `TILE_ELEMENTS` for whole rows), the other one
    fills the width, the rows fill the tile."""
    width = TILE_ELEMENTS if rows == 1 else TILE_WIDTH
    if groups_adjacent:
        block_g = min(_power_of_two(groups), width)
        block_k = min(_power_of_two(kernel), max(1, width // block_g))
    else:
        block_k = min(_power_of_two(kernel), width)
        block_g = min(_power_of_two(groups), max(1, width // block_k))
    block_r = min(_power_of_two(rows), max(1, TILE_ELEMENTS // (block_g * block_k)))
    return block_r, block_g, block_k


def adamw_prox_(
    tensors: Sequence[Sequence[Tensor]],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
    maximize: bool,
    penalty: str,
    metric: str,
    group_by: str,
    lambda_: float,
    max_newton_steps: int = MAX_NEWTON_STEPS,
    group_sizes: Sequence[int] = (),
) -> None:
    """AdamW then the prox, in place, for every weight of `tensors` = (params, grads, exp_avgs,
    exp_avg_sqs, max_exp_avg_sqs (empty without amsgrad), steps), all of one dtype on one
    device; `steps` are incremented where they live. `group_sizes` (one per param, or none)
    sets the p_g of the group lasso's weight √p_g. Nothing is read back to the host: the
    tables go to the device with asynchronous copies, and each tile's Newton loop ends there."""
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = tensors
    if not params:
        return
    from lightning_mtl.sparsity.kernels import triton_program as tp

    device, dtype = params[0].device, params[0].dtype
    grouped = penalty == "group_lasso" and group_by == "in_channel"
    views = [_view(p, grouped) for p in params]
    ints = torch.tensor(
        [
            [
                *(t[i].data_ptr() for t in (params, grads, exp_avgs, exp_avg_sqs)),
                max_exp_avg_sqs[i].data_ptr() if max_exp_avg_sqs else 0,
                *views[i],
            ]
            for i in range(len(params))
        ],
        dtype=torch.int64,
    )
    # (tile shape, groups adjacent) → [weight, first group] of each of its programs
    launches: dict[tuple[int, int, int, bool], list[int]] = {}
    for i, (rows, groups, kernel, stride_g, _) in enumerate(views):
        if params[i].numel():
            adjacent = stride_g == 1
            block_r, block_g, block_k = _tile(rows, groups, kernel, adjacent)
            launches.setdefault((block_r, block_g, block_k, adjacent), []).extend(
                x for first in range(0, groups, block_g) for x in (i, first)
            )
    table = _to_device(
        torch.cat(
            [ints.flatten(), *(torch.tensor(t, dtype=torch.int64) for t in launches.values())]
        ),
        device,
    )
    beta1, beta2 = betas
    scale = lr * lambda_
    sizes = group_sizes or [group_size(p, group_by) for p in params]
    launch_constants = [
        -1.0 if maximize else 1.0,
        1 - lr * weight_decay,
        1 - beta1,
        beta2,
        1 - beta2,
        eps,
        torch.finfo(dtype).eps ** 0.5,  # the Newton tolerance, as the eager solver's
        torch.finfo(dtype).tiny,
    ]
    thresholds = [scale if penalty == "l1" else scale * math.sqrt(n) for n in sizes]
    floats = _to_device(_float_table(launch_constants, thresholds, steps, lr, betas), device)
    offset = ints.numel()
    for (block_r, block_g, block_k, adjacent), tiles in launches.items():
        count = len(tiles) // 2
        tp.adamw_prox_program[(count,)](
            table,
            floats,
            table[offset : offset + len(tiles)],
            max_newton_steps,
            DTYPE=tp.DTYPES[dtype],
            PENALTY=tp.PENALTIES.index(penalty),
            METRIC=tp.METRICS.index(metric),
            AMSGRAD=bool(max_exp_avg_sqs),
            LERP_SMALL=abs(1 - betas[0]) < 0.5,
            BLOCK_R=block_r,
            BLOCK_G=block_g,
            BLOCK_K=block_k,
            GROUPS_ADJACENT=adjacent,
        )
        offset += len(tiles)


def _float_table(
    launch_constants: list[float],
    thresholds: list[float],
    steps: Sequence[Tensor],
    lr: float,
    betas: tuple[float, float],
) -> Tensor:
    """The program's float64 table (`triton_program`): the launch's constants, then per
    weight −lr/(1 − β₁ᵗ), √(1 − β₂ᵗ) and its threshold — the bias corrections computed where
    torch keeps the step counters (on the CPU unless `fused`/`capturable`), once incremented."""
    steps = list(steps)
    torch._foreach_add_(steps, 1)
    step = torch.stack([s.reshape(()) for s in steps]).to(torch.float64)
    host = torch.tensor([*launch_constants, *thresholds], dtype=torch.float64)
    launch, threshold = _to_device(host, step.device).split([len(launch_constants), len(steps)])
    beta1, beta2 = betas
    per_weight = torch.stack([-lr / (1 - beta1**step), (1 - beta2**step).sqrt(), threshold], 1)
    return torch.cat([launch, per_weight.flatten()])


def _to_device(table: Tensor, device: torch.device) -> Tensor:
    """`table` on `device`; a CPU table goes to a GPU by an asynchronous copy from pinned
    memory (torch's pinned allocator keeps the buffer until the copy has run)."""
    if table.device == device:
        return table
    return table.pin_memory().to(device, non_blocking=True)
