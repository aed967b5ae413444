"""Training augmentation on ``(image, target)`` pairs.

A transform is any callable ``(image, target) -> (image, target)``. Transforms never modify their inputs in
place (the dataset's target tensors may be shared with its records).

Randomness comes from a ``torch.Generator`` when one is given, so a run can be repeated exactly; without one
the global torch RNG is used, which DataLoader seeds differently in every worker. (A Generator passed here is
copied into each worker process, so all workers would then draw the same sequence: give one only when
loading in the main process, or use the global RNG with ``torch.manual_seed``.)
"""

from __future__ import annotations

import torch

from fpn.data.dataset import Target
from fpn.errors import ConfigError


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror an image and its boxes left-right.

    In continuous pixel coordinates a column ``x`` maps to ``W - x``, so ``(x1, x2)`` becomes
    ``(W - x2, W - x1)``: a flipped box is still ordered and flipping twice is the identity.
    """
    width = image.shape[-1]
    flipped = dict(target)
    if "boxes" in target:
        boxes = target["boxes"].clone()
        boxes[:, 0] = width - target["boxes"][:, 2]
        boxes[:, 2] = width - target["boxes"][:, 0]
        flipped["boxes"] = boxes
    return image.flip(-1), flipped


class RandomHorizontalFlip:
    """Flip with probability ``p`` (see :func:`hflip`), drawing from ``generator`` if one is given."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if torch.rand((), generator=self.generator).item() < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
