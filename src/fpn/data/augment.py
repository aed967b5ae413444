"""Training augmentation on ``(image, target)`` pairs: flips, scale and translation jitter, and the helpers that
keep boxes on their objects when the geometry changes (also :mod:`fpn.data.mosaic`'s).

A transform is any callable ``(image, target) -> (image, target)``. Transforms never modify their inputs in
place (the dataset's target tensors may be shared with its records).

Randomness comes from a ``torch.Generator`` when one is given, so a run can be repeated exactly; without one
the global torch RNG is used, which DataLoader seeds differently in every worker. (A Generator passed here is
copied into each worker process, so all workers would then draw the same sequence: give one only when
loading in the main process, or use the global RNG with ``torch.manual_seed``.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fpn.data.dataset import Target
from fpn.data.tiles import crop_boxes
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


# ------------------------------------------------------------------------------ boxes under a new geometry

#: Per-box entries of a target: filtered together when boxes are dropped.
PER_BOX = ("boxes", "labels", "iscrowd")
#: The grey the canvas is filled with where no image lands (Ultralytics' 114 of 255).
FILL = 114 / 255
#: Boxes narrower or lower than this many pixels after a crop are dropped (Ultralytics' ``wh_thr``).
MIN_SIDE = 2.0


def keep_boxes(target: Target, boxes: torch.Tensor, keep: torch.Tensor) -> Target:
    """``target`` with ``boxes`` (already filtered) in place of its own, its other per-box entries indexed by
    ``keep`` (a mask or indices); a new dict, the input untouched."""
    out = dict(target)
    for key in PER_BOX[1:]:
        if key in target:
            out[key] = target[key][keep]
    out["boxes"] = boxes.reshape(-1, 4)
    return out


def place_boxes(
    target: Target, scale: tuple[float, float], offset: tuple[float, float], size: tuple[int, int], min_visible: float
) -> Target:
    """Boxes scaled by ``(sx, sy)``, shifted by ``(ox, oy)``, clipped to a ``(H, W)`` canvas, and dropped when
    under ``min_visible`` of their (scaled) area stays on it or a side is under :data:`MIN_SIDE` px.

    The same rule as a tile's (:func:`fpn.data.tiles.crop_boxes`): a sliver would teach the model that a
    fragment is a whole object.
    """
    (sx, sy), (ox, oy), (height, width) = scale, offset, size
    factor = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    shift = torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
    boxes = target["boxes"].reshape(-1, 4).float() * factor + shift
    clipped, keep = crop_boxes(boxes, (0, 0, width, height), min_visible)
    large = (clipped[:, 2] - clipped[:, 0] >= MIN_SIDE) & (clipped[:, 3] - clipped[:, 1] >= MIN_SIDE)
    return keep_boxes(target, clipped[large], keep.nonzero().flatten()[large])


def paste(canvas: torch.Tensor, image: torch.Tensor, x: int, y: int) -> None:
    """Copy ``image`` into ``canvas`` (in place) with its top-left corner at ``(x, y)``; parts outside are cut."""
    height, width = canvas.shape[-2:]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + image.shape[-1], width), min(y + image.shape[-2], height)
    if x1 > x0 and y1 > y0:
        canvas[:, y0:y1, x0:x1] = image[:, y0 - y : y1 - y, x0 - x : x1 - x]


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``image`` at ``(height, width)``: bilinear, antialiased when shrinking; unchanged at its own size."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


# -------------------------------------------------------------------------------- scale and translation


class RandomAffine:
    """Scale the image by a gain in ``[1 - scale, 1 + scale]`` about its centre and shift it by up to
    ``translate`` of its size, on a canvas of its own size (Ultralytics' ``random_perspective`` without
    rotation, shear or perspective, which would turn boxes into larger boxes).

    Objects change size against the image, which the model's resize to a fixed side does not undo. The
    canvas is filled with :data:`FILL` where no pixel lands; boxes follow the pixels and are clipped, and
    those left under ``min_visible`` of their area (or under 2 px a side) are dropped (:func:`place_boxes`).
    """

    def __init__(
        self, scale: float, translate: float, min_visible: float = 0.1, generator: torch.Generator | None = None
    ) -> None:
        if not 0.0 <= scale < 1.0:
            raise ConfigError(f"scale jitter must be in [0, 1), got {scale}")
        if not 0.0 <= translate <= 0.5:
            raise ConfigError(f"translation must be in [0, 0.5], got {translate}")
        self.scale, self.translate, self.min_visible, self.generator = scale, translate, min_visible, generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if self.scale == 0 and self.translate == 0:
            return image, target
        height, width = image.shape[-2:]
        gain = uniform(1 - self.scale, 1 + self.scale, self.generator)
        tx = uniform(-self.translate, self.translate, self.generator) * width
        ty = uniform(-self.translate, self.translate, self.generator) * height
        new_h, new_w = max(1, round(height * gain)), max(1, round(width * gain))
        # Integer offsets, and the scale the rounded size really has: boxes land exactly on their pixels.
        x, y = round((width - new_w) / 2 + tx), round((height - new_h) / 2 + ty)
        canvas = torch.full_like(image, FILL)
        paste(canvas, resize(image, new_h, new_w), x, y)
        scale = (new_w / width, new_h / height)
        return canvas, place_boxes(target, scale, (x, y), (height, width), self.min_visible)

    def __repr__(self) -> str:
        return f"RandomAffine(scale={self.scale}, translate={self.translate}, min_visible={self.min_visible})"
