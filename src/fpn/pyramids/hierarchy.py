"""Design (c) of the seed: the pyramidal feature hierarchy (SSD-style), the paper's "bottom-up pyramid".

Every bottom-up map is used for prediction on its own, with no top-down pathway::

    Pk = smooth_k(lat_k(Ck))    k = 2..5,   [N, d, H/2^k, W/2^k]
    P6 = subsample(P5)          (extra level, optional)

It has the same heads, levels and parameters per level as FPN; what it lacks is the semantics that the
top-down pathway carries from C5 down to the fine maps. The paper (Table 1 (d)) finds it much weaker
than FPN, which is the paper's point: shallow maps alone are semantically weak.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fpn.levels import Level, level
from fpn.pyramids.base import Pyramid, lateral_conv, smoothing_conv
from fpn.pyramids.extra import build_extra


class Hierarchy(Pyramid):
    """``c2..c5`` -> ``p2..p5`` (+ extras) level by level."""

    def __init__(self, in_levels: Sequence[Level], channels: int = 256, *, extra: str = "pool", norm: str = "none"):
        super().__init__(in_levels)
        self.lateral = nn.ModuleDict({lv.name: lateral_conv(lv.channels, channels, norm) for lv in self.in_levels})
        self.smooth = nn.ModuleDict({f"p{lv.index}": smoothing_conv(channels, norm) for lv in self.in_levels})
        self.extra = build_extra(extra, self.in_levels[-1], channels)
        self.levels = tuple(level(f"p{lv.index}", channels) for lv in self.in_levels)
        self.levels += self.extra.levels if self.extra else ()

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {
            f"p{lv.index}": self.smooth[f"p{lv.index}"](self.lateral[lv.name](features[lv.name]))
            for lv in self.in_levels
        }
        if self.extra is not None:
            top = self.in_levels[-1]
            out.update(self.extra(out[f"p{top.index}"], features[top.name]))
        return out
