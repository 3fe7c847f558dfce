"""Offline torchvision weights: ImageNet files from the torch hub cache (never downloaded) or a
local state-dict file, loaded with an error that names every key that does not fit."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models._api import WeightsEnum

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "cached_state_dict", "load_checked", "read_weights"]

#: the normalisation of torchvision's ImageNet weights, applied inside every backbone
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_weights(weights: str, weights_enum: type[WeightsEnum]) -> tuple[dict[str, Tensor], str]:
    """The state dict named by `weights`, and a description of its source.

    `weights` is `"imagenet"` (the enum's `DEFAULT`), a member name of `weights_enum` (e.g.
    `"IMAGENET1K_V1"`), both read from the torch hub cache, or the path of a local state-dict file.
    """
    if weights == "imagenet" or weights in weights_enum.__members__:
        member = weights_enum.DEFAULT if weights == "imagenet" else weights_enum[weights]
        return cached_state_dict(member), repr(member)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights must be None, 'imagenet', one of {list(weights_enum.__members__)} or the "
            f"path of a state-dict file; no file at {path}"
        )
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def cached_state_dict(member: WeightsEnum) -> dict[str, Tensor]:
    """The state dict of torchvision weights from the torch hub cache; never downloads."""
    file_name = os.path.basename(urlparse(member.url).path)
    directory = Path(torch.hub.get_dir()) / "checkpoints"
    path = directory / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{member!r} is not in the torch hub cache and is never downloaded: place "
            f"{file_name} (from {member.url}) in {directory}, or pass the path of a local "
            "state-dict file as weights"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checked(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str,
    ignore: Collection[str] = (),
) -> None:
    """Load `state_dict` into `module`, naming every missing, unexpected or misshapen key.

    Keys under a prefix in `ignore` (e.g. `fc`, a classifier the backbone drops) are skipped on
    both sides.
    """

    def kept(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in ignore)

    state = {k: v for k, v in state_dict.items() if kept(k)}
    own = {k: v for k, v in module.state_dict().items() if kept(k)}
    # old torchvision files predate BatchNorm's `num_batches_tracked`; loading fills it in
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        f"{what}: {_listing(keys)}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", misshapen),
        )
        if keys
    ]
    if problems:
        raise ValueError(f"weights {source} do not fit this backbone; " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def _listing(keys: Iterable[str], limit: int = 10) -> str:
    """Comma-separated keys, cut after `limit` with the total count."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, … ({len(keys)} in all)"
