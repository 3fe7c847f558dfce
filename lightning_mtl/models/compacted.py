"""A compacted model as data: the network's `ModelSpec`, the compaction plan and the weights.

`save_compacted` writes plain containers and tensors only, so `load_compacted` reads the file
with `torch.load(weights_only=True)` (no pickled code runs on load): it builds the dense network
from the spec (`build_from_spec`), shrinks it to the plan (`CompactionPlan.apply`) and loads
the state dict. A file whose architecture, plan and weights disagree is refused with
`CompactionPlanError`, naming the file and the layer or key.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mtl.models.builder import ModelSpec, build_from_spec
from lightning_mtl.sparsity.plan import CompactionPlan, CompactionPlanError

__all__ = ["COMPACTED_FORMAT", "load_compacted", "save_compacted"]

#: the `format` entry of a compacted model file
COMPACTED_FORMAT = "lightning-mtl compacted model"
_VERSION = 1


def save_compacted(
    model: nn.Module, path: str | Path, *, spec: ModelSpec, plan: CompactionPlan
) -> None:
    """Save the compacted `model` as `{format, version, model_spec, plan, state_dict}`.

    `spec` is the dense network's (a module's `model_spec`; stored as `spec.to_data()` without
    the backbone's `weights` option: the state dict holds the weights), `plan` the
    `CompactionReport.plan` of the compaction. Rebuilds the architecture first and refuses
    (`CompactionPlanError`) a model that `spec` and `plan` do not describe, so that every file
    written loads.
    """
    spec_data = spec.without_pretrained_weights().to_data()
    state, where = model.state_dict(), f"save_compacted({path})"
    _check_weights(_rebuild(spec_data, plan, where).state_dict(), state, where)
    data = {"format": COMPACTED_FORMAT, "version": _VERSION, "model_spec": spec_data}
    torch.save({**data, "plan": plan.to_data(), "state_dict": state}, path)


def load_compacted(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model `save_compacted` wrote, in eval mode (`torch.load(..., weights_only=True)`)."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CompactionPlanError(
            f"{path} is not a compacted model file: it holds pickled objects (a pickled module "
            "from an earlier lightning-mtl compact?); compact its checkpoint again"
        ) from error
    if not isinstance(data, dict) or data.get("format") != COMPACTED_FORMAT:
        raise CompactionPlanError(f"{path} is not a compacted model file (no {COMPACTED_FORMAT!r})")
    if data.get("version") != _VERSION:
        raise CompactionPlanError(f"{path}: format version {data.get('version')}, not {_VERSION}")
    model = _rebuild(data["model_spec"], CompactionPlan.from_data(data["plan"]), str(path))
    _check_weights(model.state_dict(), data["state_dict"], str(path))
    model.load_state_dict(data["state_dict"])
    return model.eval()


def _rebuild(spec_data: Mapping[str, Any], plan: CompactionPlan, where: str) -> nn.Module:
    """The dense network of the `ModelSpec.to_data()` `spec_data`, shrunk to `plan`."""
    try:
        model = build_from_spec(ModelSpec.from_data(spec_data))
        plan.apply(model)
    except (CompactionPlanError, TypeError, KeyError) as error:
        raise CompactionPlanError(f"{where}: {error}") from error
    return model


def _check_weights(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], where: str) -> None:
    """Refuse weights whose keys or shapes differ from the rebuilt architecture's."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        raise CompactionPlanError(
            f"{where}: the weights do not fit the architecture and plan: missing keys {missing}, "
            f"unexpected keys {extra}"
        )
    for key, tensor in expected.items():
        if found[key].shape != tensor.shape:
            raise CompactionPlanError(
                f"{where}: {key!r}: the architecture and plan give shape {list(tensor.shape)}, "
                f"the weights have {list(found[key].shape)}"
            )
