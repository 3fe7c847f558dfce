"""Figures: the per-layer sparsity spy plot (the papers' Fig. 3)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from lightning_mtl.sparsity.groups import NamedWeights, live_groups


def spy_plot(weights: NamedWeights, group_by: str = "in_channel", title: str = "") -> Figure:
    """Live (dark) and zero (white) channel groups of every conv, one row per layer.

    Rows are the convs in forward order; each row's groups are stretched to the widest layer so
    all layers share the x axis (group index / number of groups). The right panel gives each
    layer's fraction of live groups.
    """
    masks = [live_groups(w, group_by).cpu().numpy() for _, w in weights]
    width = max(m.size for m in masks)
    image = np.stack([m[(np.arange(width) * m.size) // width] for m in masks]).astype(float)
    fractions = [m.mean() for m in masks]
    height = max(3.0, 0.12 * len(masks) + 1.0)
    fig, (ax, bar) = plt.subplots(
        1, 2, figsize=(10, height), gridspec_kw={"width_ratios": [5, 1]}, sharey=True
    )
    ax.imshow(image, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(weights)), [name for name, _ in weights], fontsize=6)
    ax.set_xticks([0, width - 1], ["first", "last"])
    ax.set_xlabel(f"{group_by.replace('_', ' ')} group (stretched per layer)")
    ax.set_title(title or "live channel groups (dark)")
    bar.barh(range(len(fractions)), fractions, color="0.3")
    bar.set_xlim(0, 1)
    bar.set_xlabel("live fraction")
    fig.tight_layout()
    return fig
