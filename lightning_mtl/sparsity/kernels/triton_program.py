"""The Triton program of `triton_adamw_prox` (imported only when it runs: it needs triton).

`adamw_prox_program` is compiled by Triton for CUDA tensors, or — when `TRITON_INTERPRET=1`
was set before triton was imported (`INTERPRETED`) — run by Triton's interpreter, which also
takes CPU tensors. One program takes BLOCK_G
groups of one weight read as [R, G, K] (see `triton_adamw_prox`); everything it needs comes
from three tables, so one launch serves many weights:

- `ints`  int64 [L, 10]: pointers of the weight, gradient, exp_avg, exp_avg_sq and
  max_exp_avg_sq, then R, G, K and the strides of G and K (one of which is 1:
  `GROUPS_ADJACENT` says which);
- `floats` float64 [8 + 3·L]: the launch's constants (gradient sign, 1 − lr·wd, 1 − β₁, β₂,
  1 − β₂, ε, Newton tolerance, smallest normal number), then per weight −lr/(1 − β₁ᵗ),
  √(1 − β₂ᵗ) and the prox threshold (lr·λ·√p_g, or lr·λ for l1) — float64, rounded to the
  weight's dtype here as torch rounds its ops' Python scalars;
- `tiles` int64 [T, 2]: per program, the weight and its first group.

The arithmetic follows torch's AdamW (`_single_tensor_adamw`) and the eager prox
(`operators.group_lasso`, `operators.l1`) operation by operation, so both agree to float
rounding (on a GPU, `tl.sqrt` of float32 is the hardware's approximate square root).
"""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

#: integers per weight in the `ints` table, and the launch constants before the per-weight
#: floats in `floats` (the launcher writes both)
INTS_PER_WEIGHT = tl.constexpr(10)
LAUNCH_CONSTANTS = tl.constexpr(8)
FLOATS_PER_WEIGHT = tl.constexpr(3)
#: the penalties and metrics by their code in the program (PENALTY, METRIC): the position here
PENALTIES = ("group_lasso", "l1")
METRICS = ("euclidean", "adaptive", "uncorrected")
#: Triton's dtype of each weight dtype the program takes
DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def _chunk(r0, k0, r_lane, k_lane, rows, kernel, g_valid, group_offset, stride_r, stride_k):
    """Offsets and mask of the tile's chunk from row r0 and kernel position k0."""
    r = r0 + r_lane
    k = k0 + k_lane
    return r * stride_r + group_offset + k * stride_k, (r < rows) & g_valid & (k < kernel)


@triton.jit
def _metric(root, bc2_sqrt, eps, METRIC: tl.constexpr):
    """The prox's metric d from √v: adaptive √v̂ + ε (Adam's own denominator), uncorrected
    √v + ε."""
    return root / bc2_sqrt + eps if METRIC == 1 else root + eps


@triton.jit
def adamw_prox_program(
    ints_ptr,
    floats_ptr,
    tiles_ptr,
    max_newton,
    DTYPE: tl.constexpr,  # Triton spells its compile-time constants in capitals
    PENALTY: tl.constexpr,  # its position in PENALTIES
    METRIC: tl.constexpr,  # its position in METRICS
    AMSGRAD: tl.constexpr,
    LERP_SMALL: tl.constexpr,  # 1 − β₁ < 0.5: which of torch's lerp formulas
    BLOCK_R: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUPS_ADJACENT: tl.constexpr,  # the stride of G is 1 (else that of K is)
):
    grad_sign = tl.load(floats_ptr).to(DTYPE)
    decay = tl.load(floats_ptr + 1).to(DTYPE)
    lerp_weight = tl.load(floats_ptr + 2).to(DTYPE)
    beta2 = tl.load(floats_ptr + 3).to(DTYPE)
    one_minus_beta2 = tl.load(floats_ptr + 4).to(DTYPE)
    eps = tl.load(floats_ptr + 5).to(DTYPE)
    tolerance = tl.load(floats_ptr + 6).to(DTYPE)
    tiny = tl.load(floats_ptr + 7).to(DTYPE)

    tile = tl.program_id(0)
    layer = tl.load(tiles_ptr + 2 * tile)
    first_group = tl.load(tiles_ptr + 2 * tile + 1)
    row = ints_ptr + layer * INTS_PER_WEIGHT
    p_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
    m_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
    v_ptr = tl.load(row + 3).to(tl.pointer_type(DTYPE))
    vmax_ptr = tl.load(row + 4).to(tl.pointer_type(DTYPE))
    metric_v_ptr = vmax_ptr if AMSGRAD else v_ptr  # the eager prox's v: the max with amsgrad
    rows = tl.load(row + 5)
    groups = tl.load(row + 6)
    kernel = tl.load(row + 7)
    # the unit stride as a compile-time 1, so that Triton lays threads along that axis and
    # a warp's loads are coalesced
    stride_g = 1 if GROUPS_ADJACENT else tl.load(row + 8)
    stride_k = tl.load(row + 9) if GROUPS_ADJACENT else 1
    stride_r = groups * kernel
    constants = floats_ptr + LAUNCH_CONSTANTS + FLOATS_PER_WEIGHT * layer
    neg_step = tl.load(constants).to(DTYPE)
    bc2_sqrt = tl.load(constants + 1).to(DTYPE)
    threshold = tl.load(constants + 2).to(DTYPE)

    r_lane = tl.arange(0, BLOCK_R)[:, None, None]
    g_lane = tl.arange(0, BLOCK_G)
    k_lane = tl.arange(0, BLOCK_K)[None, None, :]
    group_valid = (first_group + g_lane) < groups
    g_valid = group_valid[None, :, None]
    group_offset = (first_group + g_lane)[None, :, None] * stride_g

    # pass 1: torch AdamW's update, z into the weight, and each group's Σz² (and Σz²c)
    q_sum = tl.zeros([BLOCK_G], dtype=DTYPE)
    qc_sum = tl.zeros([BLOCK_G], dtype=DTYPE)
    for r0 in range(0, rows, BLOCK_R):
        for k0 in range(0, kernel, BLOCK_K):
            offset, mask = _chunk(
                r0, k0, r_lane, k_lane, rows, kernel, g_valid, group_offset, stride_r, stride_k
            )
            grad = tl.load(g_ptr + offset, mask=mask, other=0.0) * grad_sign
            param = tl.load(p_ptr + offset, mask=mask, other=0.0) * decay
            m0 = tl.load(m_ptr + offset, mask=mask, other=0.0)
            v0 = tl.load(v_ptr + offset, mask=mask, other=0.0)
            if LERP_SMALL:  # exp_avg.lerp_(grad, 1 − β₁)
                m1 = m0 + lerp_weight * (grad - m0)
            else:
                m1 = grad - (grad - m0) * (1 - lerp_weight)
            v1 = v0 * beta2 + one_minus_beta2 * grad * grad
            tl.store(m_ptr + offset, m1, mask=mask)
            tl.store(v_ptr + offset, v1, mask=mask)
            vv = v1
            if AMSGRAD:  # torch.maximum, NaN kept
                vmax = tl.load(vmax_ptr + offset, mask=mask, other=0.0)
                vv = tl.where((vmax > v1) | (vmax != vmax), vmax, v1)
                tl.store(vmax_ptr + offset, vv, mask=mask)
            root = tl.sqrt(vv)
            z = param + neg_step * (m1 / (root / bc2_sqrt + eps))
            d = _metric(root, bc2_sqrt, eps, METRIC)
            if PENALTY == 1:  # l1: sign(z)·max(|z| − t, 0), t = lr·λ (÷ d in a metric)
                t = threshold if METRIC == 0 else threshold / d
                shrunk = tl.abs(z) - t
                shrunk = tl.where(shrunk < 0, 0.0, shrunk)
                sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
                tl.store(p_ptr + offset, sign * shrunk, mask=mask)
            else:
                tl.store(p_ptr + offset, z, mask=mask)
                q = tl.where(mask, z * z, 0.0)
                q_sum += tl.sum(tl.sum(q, axis=2), axis=0)
                if METRIC != 0:
                    c = (1 / d) * threshold
                    qc_sum += tl.sum(tl.sum(q * c, axis=2), axis=0)

    if PENALTY == 0:
        if METRIC == 0:  # euclidean: the scale max(0, 1 − t/‖z‖), 0 for an all-zero group
            norm = tl.sqrt(tl.where(q_sum == 0, 1.0, q_sum))
            scale = 1 - threshold / norm
            scale = tl.where(scale < 0, 0.0, scale)
            theta = tl.where(q_sum == 0, 0.0, scale)
        else:
            # Newton on h(θ) = (Σ z²/(θ + c)²)^(−1/2) from θ₀ = max(0, ‖z‖ − Σz²c/‖z‖²), as
            # `operators.group_lasso_adaptive_`, until every group of the tile moved less than
            # √eps·θ (decided here, on the device), at most `max_newton` steps
            theta = tl.sqrt(q_sum) - qc_sum / tl.where(q_sum < tiny, tiny, q_sum)
            theta = tl.where(theta < 0, 0.0, theta)
            step = 0
            converged = 0
            while (step < max_newton) & (converged == 0):
                s_sum = tl.zeros([BLOCK_G], dtype=DTYPE)
                t3_sum = tl.zeros([BLOCK_G], dtype=DTYPE)
                for r0 in range(0, rows, BLOCK_R):
                    for k0 in range(0, kernel, BLOCK_K):
                        offset, mask = _chunk(
                            r0,
                            k0,
                            r_lane,
                            k_lane,
                            rows,
                            kernel,
                            g_valid,
                            group_offset,
                            stride_r,
                            stride_k,
                        )
                        z = tl.load(p_ptr + offset, mask=mask, other=0.0)
                        root = tl.sqrt(tl.load(metric_v_ptr + offset, mask=mask, other=0.0))
                        c = (1 / _metric(root, bc2_sqrt, eps, METRIC)) * threshold
                        inverse = 1 / (c + theta[None, :, None])
                        u = tl.where(mask, z * z * inverse * inverse, 0.0)
                        s_sum += tl.sum(tl.sum(u, axis=2), axis=0)
                        t3_sum += tl.sum(tl.sum(u * inverse, axis=2), axis=0)
                following = theta + (s_sum * tl.sqrt(s_sum) - s_sum) / tl.where(
                    t3_sum < tiny, tiny, t3_sum
                )
                following = tl.where(following < 0, 0.0, following)
                done = (tl.abs(following - theta) <= tolerance * following) | ~group_valid
                converged = tl.min(done.to(tl.int32), axis=0)
                theta = following
                step += 1
        # the last pass: z·θ/(θ + c), or z·scale
        for r0 in range(0, rows, BLOCK_R):
            for k0 in range(0, kernel, BLOCK_K):
                offset, mask = _chunk(
                    r0, k0, r_lane, k_lane, rows, kernel, g_valid, group_offset, stride_r, stride_k
                )
                z = tl.load(p_ptr + offset, mask=mask, other=0.0)
                if METRIC == 0:
                    factor = theta[None, :, None]
                else:
                    root = tl.sqrt(tl.load(metric_v_ptr + offset, mask=mask, other=0.0))
                    c = (1 / _metric(root, bc2_sqrt, eps, METRIC)) * threshold
                    factor = 1 / (c + theta[None, :, None]) * theta[None, :, None]
                tl.store(p_ptr + offset, z * factor, mask=mask)


#: whether the program runs in Triton's interpreter (then on CPU tensors too): triton.language's
#: own helpers (the reductions' combine functions) must be interpreted as well, which they are
#: only when TRITON_INTERPRET=1 was set as triton was first imported
INTERPRETED = isinstance(adamw_prox_program, InterpretedFunction) and isinstance(
    tl.standard._sum_combine, InterpretedFunction
)
