"""`sparsity_stats`: the one definition of % group sparsity, % parameter sparsity and profiles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from lightning_mtl.sparsity.groups import as_named_weights, live_groups


@dataclass(frozen=True)
class SparsityStats:
    """Sparsity of a set of grouped conv weights.

    A group is zero when every one of its elements is exactly 0. `layers` maps each conv name
    (forward order) to its fraction of live groups — the per-layer profile of the spy plot.
    """

    group_pct: float
    param_pct: float
    zero_groups: int
    num_groups: int
    zero_params: int
    num_params: int
    layers: dict[str, float] = field(default_factory=dict)


def sparsity_stats(
    source: nn.Module | Mapping[str, Tensor] | Iterable, group_by: str = "in_channel"
) -> SparsityStats:
    """% of zero groups and zero elements over the grouped convs of `source`, plus the profile.

    `source` is a model (its backbone's grouped convs, see `conv_weights`), a name→weight
    mapping, or an iterable of (name, weight) pairs.
    """
    zero_groups = num_groups = zero_params = num_params = 0
    layers: dict[str, float] = {}
    for name, weight in as_named_weights(source):
        live = live_groups(weight, group_by)
        n_live = int(live.sum())
        layers[name] = n_live / live.numel()
        zero_groups += live.numel() - n_live
        num_groups += live.numel()
        zero_params += int(weight.detach().eq(0).sum())
        num_params += weight.numel()
    if num_groups == 0:
        raise ValueError("sparsity_stats got no grouped weights")
    return SparsityStats(
        group_pct=100.0 * zero_groups / num_groups,
        param_pct=100.0 * zero_params / num_params,
        zero_groups=zero_groups,
        num_groups=num_groups,
        zero_params=zero_params,
        num_params=num_params,
        layers=layers,
    )


def dead_groups_warning(
    source: nn.Module | Mapping[str, Tensor] | Iterable,
    group_by: str,
    at: str,
    lambda_: float | None = None,
    advice: str = "lower λ (or start the prox later) for a useful model",
) -> str | None:
    """The one warning that every channel group of `source`'s grouped convs is zero (λ too
    large), or None while some group is live. `at` says when (`"epoch 3"`, `"step 120"`),
    `lambda_` is the λ applied then and `advice` what to change."""
    if any(bool(live_groups(w, group_by).any()) for _, w in as_named_weights(source)):
        return None
    lam = "?" if lambda_ is None else f"{lambda_:.3g}"
    return (
        f"every channel group of the grouped convs is zero at {at} (λ={lam}): the backbone "
        "passes nothing on and the heads predict from their biases alone. Training goes on; "
        f"{advice}."
    )
