"""Pictures of the pyramid: channel-energy heatmaps of bottom-up (C) and pyramid (P) maps over the image.

The paper's claim, made visible: shallow bottom-up maps (C2) respond to edges and texture everywhere,
deep ones (C5) to a few coarse blobs; the FPN maps P2..P5 keep P2's resolution while carrying C5's
semantics down the top-down pathway.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def channel_energy(feature: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """``[C, h, w]`` -> ``[H, W]`` in 0..1: the L2 norm over channels, upsampled to the image, min-max scaled."""
    energy = feature.float().pow(2).sum(dim=0).sqrt()[None, None]
    energy = F.interpolate(energy, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    low, high = energy.min(), energy.max()
    return ((energy - low) / (high - low + 1e-12)).cpu().numpy()


def pyramid_figure(
    image: Image.Image,
    bottom_up: dict[str, torch.Tensor],
    pyramid: dict[str, torch.Tensor],
    valid: Sequence[int],
    *,
    title: str = "",
) -> plt.Figure:
    """Two rows of heatmaps over the image: C-levels above, P-levels below, one column per level index.

    ``bottom_up`` / ``pyramid`` hold one image's maps ``[C, h, w]`` for the padded input; ``valid`` is the
    (height, width) of the resized image inside the padding, so each map is cropped to the image first.
    """
    names_c, names_p = list(bottom_up), list(pyramid)
    columns = max(len(names_c), len(names_p))
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.6), squeeze=False)
    backdrop = np.asarray(image.convert("L").resize((valid[1], valid[0])), dtype=np.float32) / 255.0
    for row, maps in enumerate((bottom_up, pyramid)):
        for col in range(columns):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(maps):
                continue
            name = list(maps)[col]
            feature = maps[name]
            stride = 2 ** int(name[1:])
            crop = feature[:, : -(-valid[0] // stride), : -(-valid[1] // stride)]
            heat = channel_energy(crop, valid)
            ax.imshow(backdrop, cmap="gray")
            ax.imshow(heat, cmap="inferno", alpha=0.65)
            ax.set_title(f"{name}  stride {stride}  {tuple(feature.shape[-2:])}", fontsize=9)
    fig.suptitle(title or "bottom-up maps (top) and pyramid maps (bottom): channel energy", fontsize=11)
    fig.tight_layout()
    return fig
