"""Mosaic: four training images on one canvas around a random centre (Ultralytics' 4-image ``Mosaic``).

The canvas is ``s x s`` with ``s`` the long side of the first image; every image is resized to that long
side (the first keeps its size), so objects keep the scale they have against their image. The centre
``(cx, cy)`` is uniform over the canvas, and the four images meet there: the first's bottom-right corner at
the centre (top-left quadrant), the second's bottom-left (top-right), the third's top-right (bottom-left),
the fourth's top-left (bottom-right). Each image is cut by the canvas's border only, so its boxes are
clipped to the canvas, and those left under ``min_visible`` of their area (or under 2 px a side) are dropped
(:func:`fpn.data.augment.place_boxes`). The rest of the canvas is grey (:data:`fpn.data.augment.FILL`).

This is Ultralytics' mosaic followed by the central crop its ``random_perspective`` makes of the 2s canvas
(``border = -s/2``); scale and translation jitter, when wanted, are :class:`fpn.data.augment.RandomAffine`.
Every image sees other images' context and cut-off objects, and a batch shows four images' objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fpn.data.augment import FILL, paste, place_boxes, resize
from fpn.data.dataset import Target
from fpn.errors import ConfigError

#: Item -> (image, target); the loader the mosaic draws its other three images through.
Load = Callable[[int], tuple[torch.Tensor, Target]]


def mosaic(
    items: Sequence[tuple[torch.Tensor, Target]], centre: tuple[int, int], *, min_visible: float = 0.1
) -> tuple[torch.Tensor, Target]:
    """Four ``(image, target)`` pairs as one, meeting at ``centre = (cx, cy)`` (module docstring)."""
    if len(items) != 4:
        raise ValueError(f"a mosaic takes 4 images, got {len(items)}")
    first, first_target = items[0]
    size = max(first.shape[-2:])
    cx, cy = centre
    canvas = torch.full((first.shape[0], size, size), FILL, dtype=first.dtype)
    parts = []
    for quadrant, (image, target) in enumerate(items):
        height, width = image.shape[-2:]
        factor = size / max(height, width)
        new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))  # the first: its own size
        # Which corner of the image sits at the centre: its right edge for the left quadrants, its bottom for the top.
        x = cx - new_w if quadrant in (0, 2) else cx
        y = cy - new_h if quadrant in (0, 1) else cy
        paste(canvas, resize(image, new_h, new_w), x, y)
        parts.append(place_boxes(target, (new_w / width, new_h / height), (x, y), (size, size), min_visible))
    merged = dict(first_target)
    for key in ("boxes", "labels", "iscrowd"):
        if key in first_target:
            merged[key] = torch.cat([part[key] for part in parts])
    merged["orig_size"] = (size, size)
    return canvas, merged


class RandomMosaic:
    """With probability ``p``, item ``index`` as a mosaic with three others drawn uniformly from
    ``num_items``; else the item alone. Every draw (whether, which images, the centre) comes from
    ``generator``, so a seeded generator gives the same mosaic again."""

    def __init__(self, p: float, min_visible: float = 0.1, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"mosaic probability must be in [0, 1], got {p}")
        self.p, self.min_visible, self.generator = p, min_visible, generator

    def __call__(self, load: Load, index: int, num_items: int) -> tuple[torch.Tensor, Target]:
        if self.p == 0 or float(torch.rand((), generator=self.generator)) >= self.p:
            return load(index)
        others = torch.randint(num_items, (3,), generator=self.generator).tolist()
        items = [load(index), *(load(i) for i in others)]
        size = max(items[0][0].shape[-2:])
        cx, cy = torch.randint(size + 1, (2,), generator=self.generator).tolist()
        return mosaic(items, (cx, cy), min_visible=self.min_visible)

    def __repr__(self) -> str:
        return f"RandomMosaic(p={self.p}, min_visible={self.min_visible})"
