"""ProxAdamW: AdamW followed, inside the same `step()`, by the sparsity prox."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from lightning_mtl.registry import check_choice
from lightning_mtl.sparsity import kernels
from lightning_mtl.sparsity.config import ProxMetric
from lightning_mtl.sparsity.groups import GroupBy
from lightning_mtl.sparsity.operators import PROX_OPERATORS
from lightning_mtl.sparsity.operators.group_lasso import MAX_NEWTON_STEPS

#: The prox works on blocks of whole groups of about this many elements: the adaptive solver
#: makes several passes over its scratch tensors, which then stay in the CPU cache.
PROX_BLOCK_ELEMENTS = 1 << 19
_GROUP_DIM = {"in_channel": 1, "out_channel": 0}

Kernel = Literal["auto", "compiled", "triton", "eager"]


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
    only when no group names its layers (a plain `ProxAdamW(model.parameters(), …)`). A group
    may also give `group_sizes` (one per param): the p_g of the group lasso's weight √p_g, in
    place of the weight's own group size — a conv that train-time compaction narrowed keeps its
    original groups' weight, so λ means what it meant (`TrainTimeCompaction`).

    `kernel` picks how a step runs. `"eager"`: torch's AdamW step, then the prox in PyTorch ops
    (the reference). `"compiled"`: every proxed weight (a contiguous float32/float64 CPU conv
    weight of a group with λ > 0) takes one fused C++ pass, AdamW update and prox together
    (`sparsity.kernels.adamw_prox`, built on first use). `"triton"`: every proxed weight
    (float32/float64, contiguous or channels_last, on CUDA — or on CPU under
    `TRITON_INTERPRET=1`) takes the fused Triton kernel (`sparsity.kernels.triton_adamw_prox`),
    many convs per launch and no host synchronisation. Either way every other parameter takes
    torch's AdamW update (`fused=True` where it can, unless `foreach`/`fused` say otherwise),
    and `KernelUnavailable` is raised where the kernel cannot run. `"auto"` (default): the
    Triton kernel for CUDA weights and the compiled one for CPU weights, and whatever they
    cannot take runs eagerly, with one `KernelFallbackWarning` per reason and process. All
    paths give the same results up to float rounding, and keep torch AdamW's state (`step`,
    `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        lambda_: float = 0.0,
        prox_metric: ProxMetric = "adaptive",
        group_by: GroupBy = "in_channel",
        penalty: str = "group_lasso",
        amsgrad: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        kernel: Kernel = "auto",
    ) -> None:
        check_choice("kernel", kernel, Kernel)
        self.kernel = kernel
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
        if kernel == "compiled":
            kernels.load()  # fail here rather than at the first step

    def __getstate__(self) -> dict[str, Any]:  # torch pickles only defaults, state and groups
        return {**super().__getstate__(), "kernel": self.kernel}

    def __setstate__(self, state: dict[str, Any]) -> None:  # also what load_state_dict calls
        super().__setstate__(state)
        self.__dict__.setdefault("kernel", "auto")

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
        sizes = param_group.setdefault("group_sizes", None)
        if sizes is not None:
            params = param_group["params"]
            count = 1 if isinstance(params, Tensor) else len(list(params))
            if len(sizes) != count or any(int(n) < 1 for n in sizes):
                raise ValueError(
                    f"a param group's group_sizes must give a positive size for each of its "
                    f"{count} params, got {sizes}"
                )
            param_group["group_sizes"] = [int(n) for n in sizes]
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
        reason = None if self.kernel == "eager" else self._step_unsupported()
        if reason is not None:
            self._fall_back(reason)
        if self.kernel == "eager" or reason is not None:
            loss = super().step(closure)
            self.apply_prox()
            return loss
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._fused_group_step(group)
        return loss

    @torch.no_grad()
    def apply_prox(self) -> None:
        """The prox of every group with `lambda_ > 0`, using the state of the Adam step just taken.

        Called by the eager `step()`; public so a caller that changed parameters outside
        `step()` (the meta-sparsity outer update) can re-apply it.
        """
        for group in self.param_groups:
            self._apply_prox_group(group)

    def _apply_prox_group(self, group: dict[str, Any], done: Iterable[Tensor] = ()) -> None:
        """The eager prox of the group's 4-D weights with Adam state, but those in `done`."""
        _check_prox_options(group)
        if group["lambda_"] == 0:
            return
        skip = {id(p) for p in done}
        for p in group["params"]:
            state = self.state.get(p)
            if p.dim() == 4 and state and id(p) not in skip:
                self._prox_parameter(p, group, state)

    def _step_unsupported(self) -> str | None:
        """Why no part of this step can take a fused kernel, or None."""
        if getattr(self, "grad_scale", None) is not None:
            return "the step is given a grad scale (a GradScaler with fused=True)"
        for flag in ("differentiable", "capturable"):
            if any(group[flag] for group in self.param_groups):
                return f"{flag}=True is a torch AdamW variant the fused kernels do not have"
        return None

    def _fall_back(self, reason: str) -> None:
        if self.kernel != "auto":
            raise kernels.KernelUnavailable(f"ProxAdamW(kernel={self.kernel!r}): {reason}")
        kernels.warn_fallback(reason)

    def _fused_group_step(self, group: dict[str, Any]) -> None:
        """One group's step: the proxed weights a kernel takes in one fused pass per kernel and
        dtype, the other parameters by torch's AdamW (fused where it can), then the eager prox
        of the rest."""
        _check_prox_options(group)
        # params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs (amsgrad), steps, as AdamW's
        tensors: tuple[list[Tensor], ...] = ([], [], [], [], [], [])
        has_complex = _init_group(self, group, tensors)
        params = tensors[0]
        kernel_of = {i: self._kernel_for(group, tensors, i) for i in range(len(params))}
        taken = [i for i, kernel in kernel_of.items() if kernel is not None]
        rest = [i for i, kernel in kernel_of.items() if kernel is None]
        if rest:
            chosen = _pick(tensors, rest)
            fused = group["fused"]
            if fused is None and not group["foreach"]:  # AdamW(fused=True) where it can
                fused = all(_fusable(chosen, i) for i in range(len(rest))) or None
            adamw(
                *chosen,
                foreach=group["foreach"],
                fused=fused,
                has_complex=has_complex,
                amsgrad=group["amsgrad"],
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )
        sizes = _group_sizes(group)
        for kernel, dtype in dict.fromkeys((kernel_of[i], params[i].dtype) for i in taken):
            chosen = [i for i in taken if (kernel_of[i], params[i].dtype) == (kernel, dtype)]
            kernel.adamw_prox_(
                _pick(tensors, chosen),
                lr=float(group["lr"]),
                betas=group["betas"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                penalty=group["penalty"],
                metric=group["prox_metric"],
                group_by=group["group_by"],
                lambda_=float(group["lambda_"]),
                max_newton_steps=MAX_NEWTON_STEPS,
                group_sizes=[sizes[id(params[i])] for i in chosen] if sizes else (),
            )
        self._apply_prox_group(group, done=[params[i] for i in taken])

    def _kernel_for(
        self, group: dict[str, Any], tensors: tuple[list[Tensor], ...], i: int
    ) -> ModuleType | None:
        """The kernel module that updates the group's i-th param (with a gradient) — a proxed
        4-D weight it supports — or None; a proxed one it does not support falls back
        (`_fall_back`)."""
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, _ = tensors
        if params[i].dim() != 4 or float(group["lambda_"]) == 0:
            return None
        kernel = kernels.for_device(self.kernel, params[i].device)
        penalty = group["penalty"]
        state = [grads[i], exp_avgs[i], exp_avg_sqs[i], *max_exp_avg_sqs[i : i + 1]]
        reason = kernels.penalty_unsupported(penalty, PROX_OPERATORS.get(penalty))
        reason = reason or kernel.unsupported(params[i], *state)
        if reason is not None:
            self._fall_back(reason)
            return None
        return kernel

    def _prox_parameter(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Prox one weight, a block of groups at a time so the solver's scratch stays in cache."""
        step_size = group["lr"] * group["lambda_"]
        size = _group_sizes(group).get(id(p))
        options = {} if size is None else {"group_size": size}
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
            result = operator(z, d, step_size, group_by, **options)
            if result is not view:  # the adaptive prox of a whole layer already wrote into p
                view.copy_(result)


#: torch < 2.7's AdamW has its own `_init_group`, taking `amsgrad` third
_INIT_GROUP_TAKES_AMSGRAD = "amsgrad" in inspect.signature(torch.optim.AdamW._init_group).parameters


def _init_group(optimizer: torch.optim.AdamW, group: dict[str, Any], tensors: tuple) -> bool:
    """torch's lazy state init and gather of a group's tensors: AdamW's own, so the state is
    AdamW's."""
    if _INIT_GROUP_TAKES_AMSGRAD:
        params, grads, *state = tensors
        return optimizer._init_group(group, params, grads, group["amsgrad"], *state)
    return optimizer._init_group(group, *tensors)


def _group_sizes(group: dict[str, Any]) -> dict[int, int]:
    """id(param) → the group size its penalty weight uses, for the params `group_sizes` sets."""
    sizes = group.get("group_sizes")
    return {} if sizes is None else {id(p): n for p, n in zip(group["params"], sizes, strict=True)}


def _pick(tensors: tuple[list[Tensor], ...], indices: list[int]) -> list[list[Tensor]]:
    """The lists restricted to `indices` (an empty list, max_exp_avg_sqs without amsgrad,
    stays empty)."""
    return [[t[i] for i in indices] if t else [] for t in tensors]


def _fusable(tensors: list[list[Tensor]], i: int) -> bool:
    """Whether torch's fused AdamW takes the i-th param: its fused CPU kernel needs a float32
    step on the param's device, and reads gradient and state in the param's memory layout."""
    param, step = tensors[0][i], tensors[5][i]
    return (
        param.device.type == "cpu"
        and param.is_floating_point()
        and step.device == param.device
        and step.dtype == torch.float32
        and all(t[i].stride() == param.stride() for t in tensors[1:5] if t)
    )


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
    check_choice("prox_metric", group["prox_metric"], ProxMetric)
    PROX_OPERATORS.get(group["penalty"])  # the error lists the registered penalties
    check_choice("group_by", group["group_by"], GroupBy)
