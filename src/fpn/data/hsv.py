"""Colour jitter in HSV space (Ultralytics' ``augment_hsv``): random gains on hue, saturation and value.

Each image draws three gains ``1 + u * (h, s, v)`` with ``u`` uniform in ``[-1, 1]``; hue is multiplied and
wrapped round the colour circle, saturation and value multiplied and clipped to ``[0, 1]``. Pixels do not
move, so boxes are untouched. The conversions are written here for ``[3, H, W]`` float tensors in 0..1
(torchvision's would be a run-time dependency).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fpn.data.augment import uniform
from fpn.data.dataset import Target
from fpn.errors import ConfigError


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` RGB in 0..1 -> HSV, each channel in 0..1 (hue 0 red, 1/3 green, 2/3 blue)."""
    r, g, b = image.unbind(0)
    value, _ = image.max(0)
    delta = value - image.min(0).values
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    safe = delta.clamp(min=1e-12)
    hue = torch.where(value == r, ((g - b) / safe) % 6, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hsv`."""
    hue, saturation, value = hsv.unbind(0)
    sector = hue * 6
    index = torch.floor(sector).long() % 6
    fraction = sector - torch.floor(sector)
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    # Per sector (0..5) the (r, g, b) it takes from (v, t, p, q): the hexcone's six faces.
    choices = torch.stack([value, t, p, q])  # 0: v, 1: t, 2: p, 3: q
    table = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])
    picks = table[index]  # [H, W, 3]
    return torch.gather(choices, 0, picks.permute(2, 0, 1))


class RandomHSV:
    """Jitter hue, saturation and value by random gains within ``gains = (h, s, v)`` (e.g. Ultralytics'
    ``(0.015, 0.7, 0.4)``), drawing from ``generator`` if one is given."""

    def __init__(self, gains: Sequence[float], generator: torch.Generator | None = None) -> None:
        gains = [float(g) for g in gains]
        if len(gains) != 3 or any(not 0.0 <= g <= 1.0 for g in gains):
            raise ConfigError(f"hsv gains must be three numbers in [0, 1] (hue, saturation, value), got {gains}")
        self.gains, self.generator = gains, generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if not any(self.gains):
            return image, target
        factors = [1 + uniform(-g, g, self.generator) for g in self.gains]
        hue, saturation, value = rgb_to_hsv(image).unbind(0)
        hsv = torch.stack(
            [(hue * factors[0]) % 1.0, (saturation * factors[1]).clamp(0, 1), (value * factors[2]).clamp(0, 1)]
        )
        return hsv_to_rgb(hsv).to(image.dtype), target

    def __repr__(self) -> str:
        return f"RandomHSV(gains={self.gains})"
