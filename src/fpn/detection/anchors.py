"""Anchors per pyramid level, read from the level contract.

The paper puts one anchor size on each level (32^2 on P2 ... 512^2 on P6) with three aspect ratios. The
sizes given are split into equal consecutive groups, one group per level, so:

* 5 sizes on ``p2..p6``: one size per level (the paper);
* 5 sizes on a single map (``single-map``, ``finest-only``): all five on that level, 15 anchors per cell;
* 10 sizes on 5 levels: two per level (e.g. adding smaller anchors for small objects).

A shared RPN head needs the same number of anchors on every level; uneven splits fail at build time.
Anchor layout and rounding follow torchvision's ``AnchorGenerator`` so its checkpoints work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fpn.errors import ModelBuildError
from fpn.levels import Level, check_levels
from fpn.ops import Matcher, box_iou


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on (0, 0): ``[len(ratios) * len(sizes), 4]`` xyxy, ratio-major, rounded to pixels."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)  # aspect ratio = h / w, area kept at size^2
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def split_sizes(levels: Sequence[Level], sizes: Sequence[float]) -> dict[str, tuple[float, ...]]:
    """Assign anchor sizes to levels: equal consecutive groups, small sizes on fine levels."""
    if len(sizes) % len(levels):
        raise ModelBuildError(
            f"{len(sizes)} anchor sizes cannot be split evenly over {len(levels)} levels "
            f"({', '.join(lv.name for lv in levels)}); give a multiple of {len(levels)} sizes"
        )
    per = len(sizes) // len(levels)
    ordered = sorted(sizes)
    return {lv.name: tuple(ordered[i * per : (i + 1) * per]) for i, lv in enumerate(levels)}


class AnchorGenerator(nn.Module):
    """Anchors for every cell of every level.

    ``forward(image_size, feature_sizes)`` returns ``[sum_l H_l * W_l * A, 4]`` in padded-image pixels,
    ordered level by level, then row-major over cells, then over the ``A`` anchors of a cell; this is the
    order in which the RPN head's outputs are flattened. Results are cached per sizes and device (read-only:
    callers must not modify the returned tensor in place).
    """

    CACHE_SIZE = 16  # distinct (image size, feature sizes, device) entries kept

    def __init__(self, levels: Sequence[Level], sizes: Sequence[float], aspect_ratios: Sequence[float]) -> None:
        super().__init__()
        check_levels(list(levels), consumer="anchor generator")
        self.levels = tuple(levels)
        self.sizes = split_sizes(self.levels, sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        self.num_anchors = len(self.aspect_ratios) * len(next(iter(self.sizes.values())))
        self._cells = {name: cell_anchors(s, self.aspect_ratios) for name, s in self.sizes.items()}
        self._cache: dict[tuple, tuple[torch.Tensor, list[int]]] = {}

    def grid(self, name: str, feature_size: Sequence[int], image_size: Sequence[int], device) -> torch.Tensor:
        """Anchors of one level, ``[H * W * A, 4]``."""
        h, w = feature_size
        # The stride is measured from the padded image, as torchvision does (equal to the declared stride
        # whenever the image is padded to the coarsest stride).
        stride_h = torch.tensor(image_size[0] // h, dtype=torch.int64, device=device)
        stride_w = torch.tensor(image_size[1] // w, dtype=torch.int64, device=device)
        shifts_x = torch.arange(0, w, dtype=torch.int32, device=device) * stride_w
        shifts_y = torch.arange(0, h, dtype=torch.int32, device=device) * stride_h
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        cells = self._cells[name].to(device)
        return (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)

    def forward(
        self, image_size: Sequence[int], feature_sizes: dict[str, Sequence[int]], device=None
    ) -> tuple[torch.Tensor, list[int]]:
        """All anchors for a padded image of ``image_size`` (h, w), and the count per level."""
        sizes = tuple(tuple(int(v) for v in feature_sizes[lv.name]) for lv in self.levels)
        # Anchors depend only on these sizes, and training sees a few (one per min_size): building them at
        # every step cost a measurable share of a tiny-fpn step. Inference tensors are kept apart (they
        # cannot enter autograd).
        key = (tuple(int(v) for v in image_size), sizes, str(device), torch.is_inference_mode_enabled())
        cached = self._cache.get(key)
        if cached is None:
            grids = [self.grid(lv.name, size, image_size, device) for lv, size in zip(self.levels, sizes)]
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            cached = self._cache[key] = (torch.cat(grids), [len(g) for g in grids])
        anchors, counts = cached
        return anchors, list(counts)

    def describe(self) -> dict[str, tuple[float, ...]]:
        return dict(self.sizes)


def positive_anchors(
    generator: AnchorGenerator,
    matcher: Matcher,
    padded_size: Sequence[int],
    feature_sizes: dict[str, Sequence[int]],
    boxes: torch.Tensor,
) -> dict[str, int]:
    """Per level name, the anchors ``matcher`` makes positive for ``boxes [G, 4]`` (resized-image pixels)."""
    anchors, per_level = generator(padded_size, feature_sizes, device=boxes.device)
    positive = matcher(box_iou(boxes, anchors)) >= 0
    return {lv.name: int(chunk.sum()) for lv, chunk in zip(generator.levels, positive.split(per_level))}
