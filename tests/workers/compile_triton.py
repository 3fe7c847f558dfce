"""Worker for test_prox_kernel: compile the Triton program for a GPU architecture, no GPU needed.

Run as `python tests/workers/compile_triton.py CAPABILITY` (e.g. 90 for Hopper) without
TRITON_INTERPRET: Triton compiles `adamw_prox_program` down to a cubin (with the ptxas it
ships) for every penalty and metric, both group layouts, amsgrad on and off, float32 and
float64 — what a GPU would compile at its first step — and prints one line per variant.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_mtl.sparsity.kernels import triton_program

SIGNATURE = {"ints_ptr": "*i64", "floats_ptr": "*fp64", "tiles_ptr": "*i64", "max_newton": "i32"}
#: (penalty, metric) codes of the program: group lasso × 3 metrics, l1 × 2
PROXES = [
    (triton_program.PENALTIES.index(penalty), triton_program.METRICS.index(metric))
    for penalty, metric in [
        ("group_lasso", "euclidean"),
        ("group_lasso", "adaptive"),
        ("group_lasso", "uncorrected"),
        ("l1", "euclidean"),
        ("l1", "adaptive"),
    ]
]
#: (BLOCK_R, BLOCK_G, BLOCK_K, GROUPS_ADJACENT): a 3×3 conv, a 1×1 or channels_last one, rows
TILES = [(16, 4, 16, False), (16, 64, 1, True), (1, 1, 1024, False)]


def main(capability: int) -> None:
    target = GPUTarget("cuda", capability, 32)
    variants = [
        (tl.float32, penalty, metric, amsgrad, tile)
        for (penalty, metric), amsgrad, tile in itertools.product(PROXES, (False, True), TILES)
    ]
    variants.append((tl.float64, 0, 1, False, TILES[0]))
    for dtype, penalty, metric, amsgrad, (block_r, block_g, block_k, adjacent) in variants:
        constants = {
            "DTYPE": dtype,
            "PENALTY": penalty,
            "METRIC": metric,
            "AMSGRAD": amsgrad,
            "LERP_SMALL": True,
            "BLOCK_R": block_r,
            "BLOCK_G": block_g,
            "BLOCK_K": block_k,
            "GROUPS_ADJACENT": adjacent,
        }
        signature = {**SIGNATURE, **dict.fromkeys(constants, "constexpr")}
        source = ASTSource(triton_program.adamw_prox_program, signature, constants)
        compiled = triton.compile(source, target=target)
        assert compiled.asm["cubin"], constants
        print(f"sm_{capability} {constants}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
