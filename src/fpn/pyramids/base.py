"""What every pyramid design is: a module ``features -> features`` that declares its input and output levels.

The detector never asks which design it holds: it reads ``pyramid.levels`` (the prediction maps, e.g.
``p2..p6``) and passes ``backbone(images)`` through ``pyramid(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fpn.layers.norms import make_norm
from fpn.levels import Level, check_levels


class Pyramid(nn.Module):
    """Base class: subclasses set ``in_levels`` (what they read) and ``levels`` (what they produce)."""

    in_levels: tuple[Level, ...]
    levels: tuple[Level, ...]

    def __init__(self, in_levels: Sequence[Level]) -> None:
        super().__init__()
        check_levels(list(in_levels), consumer=type(self).__name__)
        self.in_levels = tuple(in_levels)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def in_level(self, name: str) -> Level:
        for lv in self.in_levels:
            if lv.name == name:
                return lv
        raise KeyError(name)


def lateral_conv(cin: int, cout: int, norm: str) -> nn.Module:
    """The 1x1 lateral connection that brings a bottom-up map to ``d`` channels."""
    return _conv(cin, cout, 1, norm)


def smoothing_conv(channels: int, norm: str) -> nn.Module:
    """The 3x3 convolution on a merged map that reduces the aliasing of upsampling."""
    return _conv(channels, channels, 3, norm)


def _conv(cin: int, cout: int, kernel: int, norm: str) -> nn.Module:
    # The paper's pyramid has no non-linearities; a norm (if asked for) replaces the bias.
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm == "none":
        return conv
    if norm == "gn":
        return nn.Sequential(conv, make_norm("gn", cout))  # the backbone's GroupNorm, same groups
    raise ValueError(f"unknown pyramid norm {norm!r}")
