"""`GroupSparsity`: the sparsity settings of a module, typed and validated once."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from lightning_mtl.registry import check_choice
from lightning_mtl.sparsity.groups import GroupBy
from lightning_mtl.sparsity.operators import PROX_OPERATORS

__all__ = ["PROX_METRICS", "GroupSparsity", "ProxMetric"]

ProxMetric = Literal["adaptive", "euclidean", "uncorrected"]
#: the metric the prox is taken in: Adam's √v̂ + ε (`adaptive`), the identity (`euclidean`), or
#: the reference code's √v + ε without bias correction (`uncorrected`, a stronger prox)
PROX_METRICS: tuple[str, ...] = get_args(ProxMetric)


@dataclass(frozen=True)
class GroupSparsity:
    """What is penalised, how strongly, and how the prox is taken.

    Args:
        lambda_: λ of every grouped conv (0 = dense).
        layer_lambdas: λ per grouped conv by name, overriding `lambda_` for those convs.
        prox_metric: `adaptive` (Adam's metric, the papers'), `euclidean`, or `uncorrected`
            (the reference code's √v + ε, no bias correction; docs/sparsity.md).
        penalty: the prox operator by registered name (`group_lasso`, `l1`, a user's).
        group_by: `in_channel` (the papers) or `out_channel`.
        start_epoch: dense warm-up epochs before the prox is applied.
        layers: regex selecting the grouped backbone convs (None: all).
    """

    lambda_: float = 0.0
    layer_lambdas: Mapping[str, float] | None = None
    prox_metric: ProxMetric = "adaptive"
    penalty: str = "group_lasso"
    group_by: GroupBy = "in_channel"
    start_epoch: int = 0
    layers: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.lambda_, int | float) and math.isfinite(self.lambda_)) or (
            self.lambda_ < 0
        ):
            raise ValueError(f"lambda_ must be >= 0 (0 = dense), got {self.lambda_!r}")
        check_choice("prox_metric", self.prox_metric, ProxMetric)
        PROX_OPERATORS.get(self.penalty)  # the error lists the registered penalties
        check_choice("group_by", self.group_by, GroupBy)
        if self.start_epoch < 0:
            raise ValueError(f"prox_start_epoch must be >= 0, got {self.start_epoch}")
        negative = {n: v for n, v in (self.layer_lambdas or {}).items() if not v >= 0}
        if negative:
            raise ValueError(f"layer_lambdas must be >= 0, got {negative}")

    def lambda_of(self, layer: str) -> float:
        """λ of one grouped conv once the warm-up is over."""
        return float((self.layer_lambdas or {}).get(layer, self.lambda_))

    def lambdas(self, layers: Sequence[str]) -> dict[str, float]:
        """λ per grouped conv, for these conv names."""
        return {name: self.lambda_of(name) for name in layers}

    def check_layers(self, layers: Sequence[str]) -> None:
        """Every conv `layer_lambdas` names must be one of the grouped convs."""
        unknown = sorted(set(self.layer_lambdas or {}) - set(layers))
        if unknown:
            raise ValueError(
                f"layer_lambdas names unknown convs {unknown}; the grouped convs are {list(layers)}"
            )
