"""Design (b) of the seed: a single feature map.

Only one bottom-up map is used for prediction: C5 (the last layer, as in the seed) or C4 (the paper's
stronger single-scale baseline, Table 1 (a)/(b)). It is brought to ``d`` channels by a 1x1 conv and
smoothed by a 3x3 conv, so that its head sees the same width as FPN's::

    P = smooth(lat(C5))        [N, d, H/32, W/32]   (or from C4: [N, d, H/16, W/16])

All anchor sizes then sit on this one level. Design (a), the featurized image pyramid, is this model run
on several image scales at test time (see :mod:`fpn.detection.image_pyramid`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fpn.levels import Level, level
from fpn.pyramids.base import Pyramid, lateral_conv, smoothing_conv


class SingleMap(Pyramid):
    """``{"c5": ...}`` -> ``{"p5": [N, d, H5, W5]}`` (or ``c4`` -> ``p4``)."""

    def __init__(self, in_levels: Sequence[Level], channels: int = 256, *, source: str = "c5", norm: str = "none"):
        chosen = [lv for lv in in_levels if lv.name == source]
        if not chosen:
            raise ValueError(f"single-map source {source!r} is not among {[lv.name for lv in in_levels]}")
        super().__init__(chosen)
        self.source = source
        self.lateral = lateral_conv(chosen[0].channels, channels, norm)
        self.smooth = smoothing_conv(channels, norm)
        self.levels = (level(f"p{chosen[0].index}", channels),)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {self.levels[0].name: self.smooth(self.lateral(features[self.source]))}
