"""LOMT stage 2: heads that read intermediate backbone layers (taps), backbone cut after them.

A layer-optimized multi-task (LOMT) model attaches each task's decoder to the layer selected for
that task (its *tap*, a conv name such as `layer3.3.conv1`) instead of the backbone's last feature
map. The backbone is traced with torch.fx (torchvision's `create_feature_extractor`), which keeps
only the nodes the taps need: nothing after the deepest tap is computed, and the layers after it
are not part of the model (no parameters, no MACs, no state-dict keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, fx, nn
from torchvision.models import convnext, efficientnet, mobilenetv2, mobilenetv3, regnet, resnet
from torchvision.models.feature_extraction import create_feature_extractor

from lightning_mtl.models.multitask import at_input_size
from lightning_mtl.registry import check_choice

__all__ = ["BLOCKS", "TAP_OUTPUTS", "LayerOptimizedModel", "TapOutput", "TruncatedBackbone"]

#: What a tap reads: the raw output of its conv (before BN/ReLU, as the LOMT authors did), or the
#: output of the residual block holding the conv.
TapOutput = Literal["conv", "block"]
TAP_OUTPUTS: tuple[str, ...] = get_args(TapOutput)
#: the residual/building blocks whose output `tap_output="block"` reads (the torchvision families')
BLOCKS: tuple[type[nn.Module], ...] = (
    resnet.BasicBlock,
    resnet.Bottleneck,
    regnet.ResBottleneckBlock,
    mobilenetv2.InvertedResidual,
    mobilenetv3.InvertedResidual,
    efficientnet.MBConv,
    efficientnet.FusedMBConv,
    convnext.CNBlock,
)
# spatial size of the dummy input used to measure the tap channel counts
_PROBE_SIZE = 32


class TruncatedBackbone(nn.Module):
    """The backbone up to its deepest tap, returning `{tap: features}`.

    Args:
        backbone: a backbone with `conv_layers()` (`DilatedResNet`, `TorchvisionBackbone`),
            traceable by torch.fx. Its modules are shared, not copied: the kept convs are the
            backbone's own objects.
        taps: conv names from `backbone.conv_layers()` (`layer3.3.conv1`, `conv1`, …).
        tap_output: `conv`: a tap is the raw output of its conv; `block`: the output of the
            block (one of `BLOCKS`: ResNet's `BasicBlock`/`Bottleneck`, RegNet's, MobileNet's,
            EfficientNet's and ConvNeXt's blocks) holding the conv (`layer3.3.conv1` →
            `layer3.3`, the block's final ReLU; `features.4.block.0.0` → `features.4`). A conv
            outside any block (a stem, a last 1×1 conv) gives its own output in both modes.

    Attributes:
        taps: the distinct taps, in the given order.
        out_channels: channels of each tap's features.
    """

    def __init__(
        self, backbone: nn.Module, taps: Sequence[str], tap_output: TapOutput = "conv"
    ) -> None:
        super().__init__()
        check_choice("tap_output", tap_output, TapOutput)
        if isinstance(taps, str):
            taps = [taps]
        taps = list(dict.fromkeys(taps))
        if not taps:
            raise ValueError("a TruncatedBackbone needs at least one tap")
        convs = [name for name, _ in backbone.conv_layers()]
        unknown = [t for t in taps if t not in convs]
        if unknown:
            raise ValueError(f"unknown tap(s) {unknown}; the backbone's convs are {convs}")
        self.taps = taps
        self.tap_output = tap_output
        # fx node (module path) each tap reads; several taps may share one block output
        nodes = [_block_of(backbone, t) if tap_output == "block" else t for t in taps]
        self._nodes = nodes
        body = create_feature_extractor(backbone, {n: n for n in dict.fromkeys(nodes)})
        if _code(body.train_graph) == _code(body.eval_graph):
            # one graph for both modes (always so for `DilatedResNet`): a plain GraphModule, as
            # torchvision's two-graph module comes out of `copy.deepcopy` with every submodule in
            # train mode and out of pickling as a plain GraphModule anyway
            body = fx.GraphModule(body, body.train_graph, class_name="TruncatedBody")
        # the backbone's `from __future__ import annotations` leaves the input annotated with the
        # string "Tensor", which TorchScript cannot resolve in the generated code
        graphs = (body.train_graph, body.eval_graph) if hasattr(body, "eval_graph") else ()
        for graph in (*graphs, body.graph):
            for node in graph.nodes:
                if node.op == "placeholder":
                    node.type = Tensor
        body.recompile()
        body.train(backbone.training)
        self.body = body
        kept = dict(body.named_modules())
        self._conv_names = [n for n in convs if n in kept]
        self.out_channels = self._probe_channels()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features per tap for images [N, 3, H, W] in [0, 1]."""
        features = self.body(x)
        out: dict[str, Tensor] = {}
        for i, tap in enumerate(self.taps):  # no zip(strict=...) in TorchScript
            out[tap] = features[self._nodes[i]]
        return out

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """The kept convs (up to the deepest tap), named and ordered as in the full backbone."""
        return [(name, self.body.get_submodule(name)) for name in self._conv_names]

    def _probe_channels(self) -> dict[str, int]:
        """Channels per tap, from a no-grad forward of a small dummy batch in eval mode."""
        param = next(self.body.parameters(), None)
        device = param.device if param is not None else None
        dtype = param.dtype if param is not None else None
        x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE, device=device, dtype=dtype)
        modes = [(m, m.training) for m in self.modules()]
        try:
            self.eval()
            with torch.no_grad():
                features = self(x)
        finally:
            for m, training in modes:
                m.train(training)
        return {tap: int(f.shape[1]) for tap, f in features.items()}


class LayerOptimizedModel(nn.Module):
    """Each task's head reads its tap of a `TruncatedBackbone` (one backbone pass per batch).

    Same output contract as `MultiTaskModel`: a dict per task key; dense (4-D) outputs are
    upsampled bilinearly to the input's height and width, others returned as they are.

    Args:
        backbone: the truncated backbone holding every tap of `task_taps`.
        heads: one head per task key, built for its tap's channels
            (`backbone.out_channels[task_taps[key]]`).
        task_taps: task key → tap (conv name) its head reads.
    """

    def __init__(
        self,
        backbone: TruncatedBackbone,
        heads: Mapping[str, nn.Module],
        task_taps: Mapping[str, str],
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a LayerOptimizedModel needs at least one head")
        missing = [k for k in heads if k not in task_taps]
        extra = [k for k in task_taps if k not in heads]
        if missing or extra:
            raise ValueError(
                f"task_taps must name a tap for every head and only for them; heads without a "
                f"tap: {missing}, taps for no head: {extra}"
            )
        unknown = {k: t for k, t in task_taps.items() if t not in backbone.taps}
        if unknown:
            raise ValueError(f"taps {unknown} are not taps of the backbone ({backbone.taps})")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.task_taps = {k: task_taps[k] for k in heads}

    def forward(self, images: Tensor, tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Predictions per task key for images [N, 3, H, W]; `tasks` runs only those heads."""
        features = self.backbone(images)
        size = images.shape[-2:]
        out: dict[str, Tensor] = {}
        for key, head in self.heads.items():
            if tasks is None or key in tasks:
                out[key] = at_input_size(head(features[self.task_taps[key]]), size)
        return out


def _code(graph: fx.Graph) -> str:
    return graph.python_code("self").src


def _block_of(backbone: nn.Module, conv: str) -> str:
    """The block holding a conv (`layer3.3.conv1` → `layer3.3`), else the conv."""
    parts = conv.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if isinstance(backbone.get_submodule(prefix), BLOCKS):
            return prefix
    return conv
