"""FCOS's training targets: which ground-truth box each location of each level answers for, and the box coding.

A location is a point of a level's grid, at ``(x * s, y * s)`` of the padded image (stride ``s``; torchvision
places FCOS's points as its anchor generator places anchor centres, with the stride measured from the padded
image), carrying a square "anchor" of side ``s`` only to say its scale. torchvision's rule (``FCOS.compute_loss``),
reproduced step for step, makes a location positive for a box when

* centre sampling: the point lies within ``radius * s`` (1.5 s) of the box's centre in both x and y;
* the point lies inside the box (all four distances ``l, t, r, b`` > 0);
* the box's size suits the level: ``max(l, t, r, b)`` is inside the level's range (:func:`size_ranges`);

and of several such boxes it takes the one of least area. The ranges are derived from the level contract:
``(4 s, 8 s)`` for the level of stride ``s``, open below on the finest level and above on the coarsest, which
for P3-P7 are torchvision's (0-64, 64-128, 128-256, 256-512, 512-inf); ``scale`` multiplies them (a preset
for small images may shift them down; 1 keeps torchvision's).

Boxes are coded as torchvision's ``BoxLinearCoder(normalize_by_size=True)``: ``(l, t, r, b)`` from the point,
divided by the anchor side ``s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fpn.levels import Level


def size_ranges(levels: Sequence[Level], scale: float = 1.0) -> list[tuple[float, float]]:
    """Per level, the open range of ``max(l, t, r, b)`` (pixels) its locations answer for."""
    ranges = []
    for i, lv in enumerate(levels):
        low = 0.0 if i == 0 else 4.0 * lv.stride * scale
        high = math.inf if i == len(levels) - 1 else 8.0 * lv.stride * scale
        ranges.append((low, high))
    return ranges


def location_bounds(
    anchors: torch.Tensor, per_level: Sequence[int], scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[A]`` lower and upper bounds of every location (``anchors [A, 4]``, ``per_level`` counts per level).

    As torchvision computes them: the anchor side (the level's stride) times 4 and 8 (times ``scale``), then
    the first level's lower bound 0 and the last level's upper bound inf: :func:`size_ranges` per location.
    """
    sides = anchors[:, 2] - anchors[:, 0]
    lower = sides * (4.0 * scale)
    lower[: per_level[0]] = 0
    upper = sides * (8.0 * scale)
    upper[len(sides) - per_level[-1] :] = math.inf
    return lower, upper


def assign(
    anchors: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    boxes: torch.Tensor,
    radius: float,
) -> torch.Tensor:
    """The ground-truth box each location answers for, or -1: ``anchors [A, 4]``, ``boxes [G, 4]`` -> ``[A]``.

    ``lower`` / ``upper`` ``[A]`` are the locations' size bounds (:func:`location_bounds`). Ambiguous
    locations take the box of least area, by torchvision's arithmetic: the candidate with the largest
    ``1e8 - area`` in float32 (areas within float32's step at 1e8, 8 px^2, count as equal and the first box
    wins).
    """
    if boxes.numel() == 0:
        return torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [G, 2]
    points = (anchors[:, :2] + anchors[:, 2:]) / 2  # [A, 2]
    sides = anchors[:, 2] - anchors[:, 0]
    match = (points[:, None, :] - centres[None, :, :]).abs_().max(dim=2).values < radius * sides[:, None]
    x, y = points.unsqueeze(dim=2).unbind(dim=1)  # [A, 1] each
    x0, y0, x1, y1 = boxes.unsqueeze(dim=0).unbind(dim=2)  # [1, G] each
    distances = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # [A, G, 4]: l, t, r, b
    match &= distances.min(dim=2).values > 0
    reach = distances.max(dim=2).values
    match &= (reach > lower[:, None]) & (reach < upper[:, None])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best, matched = (match.to(torch.float32) * (1e8 - areas[None, :])).max(dim=1)
    matched[best < 1e-5] = -1
    return matched


def encode(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(l, t, r, b) / s`` of ``boxes [..., 4]`` from the centres of ``anchors [..., 4]`` (side ``s``)."""
    cx = 0.5 * (anchors[..., 0] + anchors[..., 2])
    cy = 0.5 * (anchors[..., 1] + anchors[..., 3])
    codes = torch.stack((cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx, boxes[..., 3] - cy), dim=-1)
    w = anchors[..., 2] - anchors[..., 0]
    h = anchors[..., 3] - anchors[..., 1]
    return codes / torch.stack((w, h, w, h), dim=-1)


def decode(codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``[..., 4]`` xyxy from codes ``(l, t, r, b) / s`` at ``anchors [..., 4]`` (torchvision's order of
    operations, so that the same codes give the same float32 boxes)."""
    anchors = anchors.to(codes.dtype)
    cx = 0.5 * (anchors[..., 0] + anchors[..., 2])
    cy = 0.5 * (anchors[..., 1] + anchors[..., 3])
    w = anchors[..., 2] - anchors[..., 0]
    h = anchors[..., 3] - anchors[..., 1]
    codes = codes * torch.stack((w, h, w, h), dim=-1)
    return torch.stack((cx - codes[..., 0], cy - codes[..., 1], cx + codes[..., 2], cy + codes[..., 3]), dim=-1)


def centerness(codes: torch.Tensor) -> torch.Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``[..., 4]`` codes: 1 at a box's centre."""
    left_right = codes[..., [0, 2]]
    top_bottom = codes[..., [1, 3]]
    return torch.sqrt(
        (left_right.min(dim=-1).values / left_right.max(dim=-1).values)
        * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
    )
