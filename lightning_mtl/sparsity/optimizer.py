"""ProxAdamW: AdamW followed, inside the same `step()`, by the sparsity prox."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_mtl.sparsity.config import PROX_METRICS
from lightning_mtl.sparsity.groups import check_group_by
from lightning_mtl.sparsity.operators import PROX_OPERATORS

#: The prox works on blocks of whole groups of about this many elements: the adaptive solver
#: makes several passes over its scratch tensors, which then stay in the CPU cache.
PROX_BLOCK_ELEMENTS = 1 << 19
_GROUP_DIM = {"in_channel": 1, "out_channel": 0}


class ProxAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` whose step ends with the proximal step of a sparsity penalty.

    The Adam(W) update is torch's own (same defaults, same decoupled weight decay), so with
    `lambda_=0` this *is* AdamW. Then, for every 4-D weight in a param group with `lambda_ > 0`
    that received a gradient, the prox operator of `penalty` (`sparsity.operators`) is applied
    with step α = lr, in the metric `prox_metric`:

    - `penalty="group_lasso"` (λ Σ_g √p_g ‖W_g‖, groups chosen by `group_by`):
      `prox_metric="euclidean"` is the closed form W_g·max(0, 1 − α λ √p_g/‖W_g‖);
      `prox_metric="adaptive"` is the prox in Adam's own metric d = √v̂ + ε (the exact
      denominator of the step just taken), see `operators.group_lasso_adaptive`;
      `prox_metric="uncorrected"` is the same prox in d = √v + ε, Adam's raw second moment
      without bias correction, as the reference code did (a prox 1/√(1 − β₂^t) times stronger).
    - `penalty="l1"` (λ‖W‖₁) soft-thresholds each element by α λ (euclidean) or α λ / d_i.

    Because the prox lives in `step()`, it runs exactly once per real optimizer step: under
    gradient accumulation, AMP-skipped steps, DDP (identical on every rank) and resume.
    Every option may be overridden per param group; BN/bias/1-D params are never proxed.

    λ is owned here: `lambdas()` reads it and `set_lambda` changes it (the warm-up, the
    meta-sparsity outer step). A param group may name its weights with `layers` (conv names, one
    per param) so λ can be read and set per conv; groups without `layers` are the sparse groups
    only when no group names its layers (a plain `ProxAdamW(model.parameters(), …)`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        lambda_: float = 0.0,
        prox_metric: str = "adaptive",
        group_by: str = "in_channel",
        penalty: str = "group_lasso",
        amsgrad: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        self._prox_defaults = {
            "lambda_": lambda_,
            "prox_metric": prox_metric,
            "group_by": group_by,
            "penalty": penalty,
        }
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            fused=fused,
        )
        for key, value in self._prox_defaults.items():
            self.defaults[key] = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self._prox_defaults.items():
            param_group.setdefault(key, value)
        _check_prox_options(param_group)
        layers = param_group.setdefault("layers", None)
        if layers is not None:
            params = param_group["params"]
            count = 1 if isinstance(params, Tensor) else len(list(params))
            if len(layers) != count:
                raise ValueError(
                    f"a param group's layers must name each of its {count} params, got {layers}"
                )
            param_group["layers"] = list(layers)
        super().add_param_group(param_group)

    def lambdas(self) -> dict[str, float]:
        """λ per named conv (`layers` of the param groups), in param-group order."""
        return {
            layer: float(group["lambda_"])
            for group in self.param_groups
            for layer in group["layers"] or ()
        }

    def set_lambda(self, value: float | Mapping[str, float]) -> None:
        """Set λ: one value for every sparse group, or values by conv name.

        Convs sharing a param group must get one value (build one group per conv for per-layer
        λ); a name no group lists is an error.
        """
        named = [g for g in self.param_groups if g["layers"]]
        if not isinstance(value, Mapping):
            for group in named or self.param_groups:
                group["lambda_"] = value
                _check_prox_options(group)
            return
        known = [layer for g in named for layer in g["layers"]]
        unknown = [k for k in value if k not in known]
        if unknown:
            raise ValueError(f"set_lambda: unknown layers {unknown}; the named layers are {known}")
        for group in named:
            given = {value[k] for k in group["layers"] if k in value}
            if not given:
                continue
            if len(given) > 1 or any(k not in value for k in group["layers"]):
                raise ValueError(
                    f"set_lambda: layers {group['layers']} share one param group and need one "
                    f"value, got { ({k: value.get(k) for k in group['layers']}) }"
                )
            group["lambda_"] = given.pop()
            _check_prox_options(group)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = super().step(closure)
        self.apply_prox()
        return loss

    @torch.no_grad()
    def apply_prox(self) -> None:
        """The prox of every group with `lambda_ > 0`, using the state of the Adam step just taken.

        Called by `step()`; public so a caller that changed parameters outside `step()` (the
        meta-sparsity outer update) can re-apply it.
        """
        for group in self.param_groups:
            _check_prox_options(group)
            if group["lambda_"] == 0:
                continue
            for p in group["params"]:
                state = self.state.get(p)
                if p.dim() == 4 and state:
                    self._prox_parameter(p, group, state)

    def _prox_parameter(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Prox one weight, a block of groups at a time so the solver's scratch stays in cache."""
        step_size = group["lr"] * group["lambda_"]
        group_by = group["group_by"]
        operator = PROX_OPERATORS.get(group["penalty"])
        metric = group["prox_metric"]
        v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        if metric == "adaptive":
            bias_correction2_sqrt = _bias_correction2_sqrt(group["betas"][1], state["step"])
        for block in _group_blocks(p.shape, group_by):
            view = p[block]
            z = view.contiguous()  # a copy only for input-channel blocks of a large layer
            d = None
            if metric != "euclidean":
                d = v[block].sqrt()  # uncorrected: √v + ε, the reference code's metric
                if metric == "adaptive":  # √v̂ + ε, exactly the Adam step's denominator
                    d.div_(bias_correction2_sqrt)
                d.add_(group["eps"])
            result = operator(z, d, step_size, group_by)
            if result is not view:  # the adaptive prox of a whole layer already wrote into p
                view.copy_(result)


def _group_blocks(shape: torch.Size, group_by: str) -> list[tuple[slice, ...]]:
    """Index tuples cutting a [O, I, kh, kw] weight into blocks of whole groups."""
    dim = _GROUP_DIM[group_by]
    groups = shape[dim]
    per_block = max(1, PROX_BLOCK_ELEMENTS * groups // math.prod(shape))
    lead = (slice(None),) * dim
    return [(*lead, slice(i, i + per_block)) for i in range(0, groups, per_block)]


def _bias_correction2_sqrt(beta2: float, step: Tensor) -> float | Tensor:
    """√(1 − β₂^t) computed as AdamW computes it: in Python floats unless the step lives on an
    accelerator (fused/capturable AdamW), where reading it would synchronise."""
    if step.device.type == "cpu":
        return math.sqrt(1 - beta2 ** step.item())
    return (1 - beta2**step).sqrt()


def _check_prox_options(group: dict[str, Any]) -> None:
    lam = group["lambda_"]
    if isinstance(lam, Tensor):
        lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda_ must be a finite number >= 0, got {group['lambda_']!r}")
    if group["prox_metric"] not in PROX_METRICS:
        raise ValueError(
            f"unknown prox_metric {group['prox_metric']!r}; allowed: {list(PROX_METRICS)}"
        )
    PROX_OPERATORS.get(group["penalty"])  # the error lists the registered penalties
    check_group_by(group["group_by"])
