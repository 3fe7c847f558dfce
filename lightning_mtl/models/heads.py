"""Task heads: a DeepLabV3 decoder for dense tasks and a small image-level classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from lightning_mtl.registry import Registry

__all__ = ["HEADS", "ClassificationHead", "DeepLabV3Head", "build_head", "list_heads"]


class DeepLabV3Head(nn.Sequential):
    """ASPP → 3×3 conv → BN → ReLU → 1×1 classifier, with a configurable channel count.

    With `channels=256` it is torchvision's `DeepLabHead` module for module (same state dict).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 256,
        atrous_rates: Sequence[int] = (12, 24, 36),
    ) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, out_channels=channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, out_channels, 1),
        )


class ClassificationHead(nn.Module):
    """Image-level logits: 3×3 conv → ReLU → 2×2 max-pool → global average pool → 2-layer MLP.

    Returns logits [N] when `out_channels == 1` (one binary attribute), else [N, out_channels].
    """

    def __init__(
        self, in_channels: int, out_channels: int = 1, hidden: int = 64, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            # ceil_mode keeps odd borders and lets a 1×1 feature map through
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(32, out_channels),
        )
        self.squeeze_logit = out_channels == 1

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.features(x))
        return logits.squeeze(1) if self.squeeze_logit else logits


#: head kinds by name (a task's `head` names one); an entry builds
#: `head(in_channels, out_channels, channels)`
HEADS: Registry[Callable[[int, int, int], nn.Module]] = Registry("head kind")


@HEADS.register("dense")
def dense_head(in_channels: int, out_channels: int, channels: int = 256) -> nn.Module:
    """`DeepLabV3Head`, `channels` wide."""
    return DeepLabV3Head(in_channels, out_channels, channels=channels)


@HEADS.register("classification")
def classification_head(in_channels: int, out_channels: int, channels: int = 256) -> nn.Module:
    """`ClassificationHead` (its width is fixed; `channels` is the dense heads')."""
    return ClassificationHead(in_channels, out_channels)


def list_heads() -> list[str]:
    """The registered head kinds."""
    return HEADS.names()


def build_head(kind: str, in_channels: int, out_channels: int, channels: int = 256) -> nn.Module:
    """The head registered for a task's head kind (`dense`, `classification`, …)."""
    return HEADS.get(kind)(in_channels, out_channels, channels)
