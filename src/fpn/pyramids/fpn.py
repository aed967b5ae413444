"""Design (d) of the seed: the Feature Pyramid Network. **The top-down pathway lives here.**

From the coarsest bottom-up map down to the finest (the paper's equations, with ``lat`` a 1x1 conv to
``d`` channels, ``up`` a nearest-neighbour upsampling to the lateral's size, ``smooth`` a 3x3 conv)::

    M5 = lat5(C5)                      P5 = smooth5(M5)
    Mk = lat_k(Ck) + up(M(k+1))        Pk = smooth_k(Mk)        k = 4, 3, 2
    P6 = subsample(P5)                 (extra level, optional)

No non-linearities, as in the paper. Upsampling goes to the lateral's exact size rather than a fixed
factor 2, so odd input sizes (where ``ceil`` rounding makes C4 not exactly twice C5) work.

Shapes for an ``H x W`` input and ``d = 256``: ``Pk`` is ``[N, 256, ceil(H/2^k), ceil(W/2^k)]`` (the
backbone's rounding), ``P6`` is ``[N, 256, ceil(H5/2), ceil(W5/2)]``.

Two of the paper's ablations are the same pathway with a part taken out, so they live here too:
``laterals=False`` is "top-down only" (Table 1 (e): no 1x1 lateral connections below the top), and
``outputs=("p2",)`` is "finest only" (Table 1 (f): the full pathway, predictions from P2 alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.levels import Level, level
from fpn.pyramids.base import Pyramid, lateral_conv, smoothing_conv
from fpn.pyramids.extra import build_extra


def top_down(top: torch.Tensor, below: Sequence[tuple[torch.Size, torch.Tensor | None]]) -> list[torch.Tensor]:
    """The top-down pathway: the merged maps ``M``, fine to coarse.

    ``top`` is the coarsest merged map (``lat(C5)``); ``below`` lists, from coarse to fine, each finer level's
    spatial size and its lateral map (``None`` where there is no lateral connection). Each step upsamples
    the previous merged map to that size and adds the lateral.
    """
    merged = [top]
    for size, lateral in below:
        if lateral is None:
            merged.append(F.interpolate(merged[-1], size=size, mode="nearest"))
        else:
            merged.append(add_upsampled(lateral, merged[-1]))
    return merged[::-1]


def add_upsampled(lateral: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """``lateral + nearest_upsample(coarse, to lateral's size)``, written into ``lateral`` (``[N, C, H, W]``).

    Without autograd, when the lateral is exactly twice the coarse map (every even input size), each
    coarse pixel is added to its 2x2 block through a broadcasting view: no upsampled map is ever allocated
    (at P2 of an 800x1216 image that saves a 62 MB write). Otherwise ``F.interpolate``, whose nearest rule
    (``floor(i * in / out)``) equals the block rule when the ratio is exactly 2; under autograd that path
    is the cheaper one, as an in-place add into a view copies the whole gradient in backward. The lateral is
    then added into the fresh upsampled map (neither the upsampling's backward nor the add's needs it), one
    map fewer than ``lateral + upsampled``, and the same sums.
    """
    (height, width), (top_h, top_w) = lateral.shape[-2:], coarse.shape[-2:]
    tracked = torch.is_grad_enabled() and (lateral.requires_grad or coarse.requires_grad)
    # Not under the ONNX tracer: it records the in-place add into the view wrongly (fpn.export), and a
    # traced `height == 2 * top_h` would freeze this branch into the graph for every input size.
    if height == 2 * top_h and width == 2 * top_w and not tracked and not torch.jit.is_tracing():
        blocks = lateral.unflatten(3, (top_w, 2)).unflatten(2, (top_h, 2))  # [N, C, h, 2, w, 2]
        blocks += coarse[:, :, :, None, :, None]
        return lateral
    upsampled = F.interpolate(coarse, size=(height, width), mode="nearest")
    if upsampled.dtype != torch.promote_types(upsampled.dtype, lateral.dtype):
        return lateral + upsampled  # the sum is wider than the upsampled map (mixed precision)
    return upsampled.add_(lateral)


class FPN(Pyramid):
    """Bottom-up maps ``c2..c5`` -> pyramid maps ``p2..p5`` (+ extra ``p6``/``p7``), all with ``channels``.

    Args:
        in_levels: the backbone's levels, fine to coarse (e.g. ``c2..c5``).
        channels: ``d``, 256 in the paper.
        extra: ``none``, ``pool`` (P6 = subsample of P5), ``p6p7-c5`` or ``p6p7-p5``.
        norm: ``none`` (the paper) or ``gn``.
        laterals: False removes every lateral connection but the top one (the "top-down only" ablation).
        outputs: which ``p`` levels to produce (default all); ``("p2",)`` is the "finest only" ablation.
    """

    def __init__(
        self,
        in_levels: Sequence[Level],
        channels: int = 256,
        *,
        extra: str = "pool",
        norm: str = "none",
        laterals: bool = True,
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(in_levels)
        names = [f"p{lv.index}" for lv in self.in_levels]
        outputs = list(outputs) if outputs is not None else names
        if not set(outputs) <= set(names):
            raise ValueError(f"outputs {outputs} not among {names}")
        top = self.in_levels[-1]
        with_lateral = self.in_levels if laterals else (top,)
        self.lateral = nn.ModuleDict({lv.name: lateral_conv(lv.channels, channels, norm) for lv in with_lateral})
        self.smooth = nn.ModuleDict({name: smoothing_conv(channels, norm) for name in outputs})
        self.extra = build_extra(extra, top, channels) if outputs[-1] == names[-1] else None
        self.levels = tuple(level(name, channels) for name in outputs) + (self.extra.levels if self.extra else ())

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"c2": [N, C2, H/4, W/4], ...}`` -> ``{"p2": [N, d, H/4, W/4], ..., "p6": [N, d, H/64, W/64]}``."""
        names = [lv.name for lv in self.in_levels]
        below = [
            (features[name].shape[-2:], self.lateral[name](features[name]) if name in self.lateral else None)
            for name in reversed(names[:-1])
        ]
        merged = dict(zip(names, top_down(self.lateral[names[-1]](features[names[-1]]), below)))
        out = {name: self.smooth[name](merged[f"c{name[1:]}"]) for name in self.smooth}
        if self.extra is not None:
            out.update(self.extra(out[f"p{self.in_levels[-1].index}"], features[names[-1]]))
        return out
