"""Training augmentation on ``(image, target)`` pairs.

A transform is any callable ``(image, target) -> (image, target)``; :class:`Compose` chains them. Transforms
never modify their inputs in place (the dataset's target tensors may be shared with its records).

Randomness comes from a ``torch.Generator`` when one is given, so a run can be repeated exactly; without one
the global torch RNG is used, which DataLoader seeds differently in every worker. (A Generator passed here is
copied into each worker process, so all workers would then draw the same sequence: give one only when
loading in the main process, or use the global RNG with ``torch.manual_seed``.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fpn.data.dataset import Target, Transform
from fpn.errors import ConfigError


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


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


def training_transform(flip: bool = True, generator: torch.Generator | None = None) -> Transform | None:
    """The standard training augmentation of the FPN paper's detectors: a horizontal flip, nothing else."""
    return RandomHorizontalFlip(0.5, generator) if flip else None
