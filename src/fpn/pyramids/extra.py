"""Extra coarse levels above P5.

* ``pool``: P6 is P5 subsampled with stride 2 (a 1x1 max-pool), as in the paper, where P6 exists only
  to give the RPN its 512^2 anchors;
* ``p6p7-c5`` / ``p6p7-p5``: P6 = 3x3/2 conv of C5 (or P5), P7 = 3x3/2 conv of ReLU(P6), as used by
  one-stage detectors (RetinaNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpn.levels import Level, level


class PoolP6(nn.Module):
    """P6 = subsample(P5): ``[N, d, H, W] -> [N, d, ceil(H/2), ceil(W/2)]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.levels = (level("p6", channels),)

    def forward(self, p5: torch.Tensor, c5: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"p6": F.max_pool2d(p5, kernel_size=1, stride=2)}


class ConvP6P7(nn.Module):
    """P6 and P7 by stride-2 3x3 convolutions, from C5 (``source="c5"``) or from P5."""

    def __init__(self, in_channels: int, channels: int, source: str) -> None:
        super().__init__()
        self.source = source
        self.p6 = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.levels: tuple[Level, ...] = (level("p6", channels), level("p7", channels))

    def forward(self, p5: torch.Tensor, c5: torch.Tensor) -> dict[str, torch.Tensor]:
        p6 = self.p6(c5 if self.source == "c5" else p5)
        return {"p6": p6, "p7": self.p7(F.relu(p6))}


def build_extra(kind: str, c5: Level, channels: int) -> PoolP6 | ConvP6P7 | None:
    """The extra-level module named ``kind`` (``none``, ``pool``, ``p6p7-c5``, ``p6p7-p5``)."""
    if kind == "none":
        return None
    if kind == "pool":
        return PoolP6(channels)
    if kind in ("p6p7-c5", "p6p7-p5"):
        source = kind.split("-")[1]
        return ConvP6P7(c5.channels if source == "c5" else channels, channels, source)
    raise ValueError(f"unknown extra levels {kind!r}")
