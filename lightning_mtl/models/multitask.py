"""A shared backbone with one head per task."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiTaskModel"]


class MultiTaskModel(nn.Module):
    """Runs the backbone once per batch and every head on its final feature map.

    Dense (4-D) head outputs are upsampled bilinearly to the input's height and width; other
    outputs (e.g. classification logits) are returned as they are. A plain module, so it
    scripts and exports; the tasks (losses, metrics) live outside it.
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a MultiTaskModel needs at least one head")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, images: Tensor, tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Predictions per task key for images [N, 3, H, W]; `tasks` runs only those heads."""
        features = self.backbone(images)
        size = images.shape[-2:]
        out: dict[str, Tensor] = {}
        for key, head in self.heads.items():
            if tasks is None or key in tasks:
                out[key] = at_input_size(head(features), size)
        return out


def at_input_size(pred: Tensor, size: list[int]) -> Tensor:
    """A dense (4-D) head output upsampled bilinearly to the input's size; others as they are."""
    if pred.dim() == 4:
        return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
    return pred
