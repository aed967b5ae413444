"""Tiled detection: small objects in large images, found at the image's own resolution.

Resized whole to the model's input (800 px for r50-fpn, 96-544 px for the CPU presets), a 6,000 px aerial
scene shrinks its 20 px cars to 3 px, under what any pyramid level can see. Cut into overlapping tiles of
``size`` px in the image's native pixels, each tile goes through the model as an image of its own: the
model's transform resizes it as usual (shorter side to ``transform.min_size``), so a tile of ``min_size`` px
is seen at native scale, and a tile of ``2 * min_size`` px at half scale. Choose ``size`` near the model's
``min_size`` to keep small objects large relative to the model input (``fpn anchors`` shows the sizes each
level covers).

Grid (:func:`tile_grid`): along each side, tiles of ``size`` px step by at most ``size - ceil(overlap * size)``
and are spread evenly so that the last one ends at the image's edge; every pixel is covered and neighbours
share at least ``overlap * size`` px. A side shorter than ``size`` is one tile, that whole side: an image
smaller than a tile is one tile, the image itself. So every tile of an image has the same size and a batch
of them needs no padding beyond the model's own.

Streaming (:func:`detect_tiled`): tiles are cropped (views, no copy) from the decoded ``uint8 [3, H, W]``
image ``batch`` at a time and run through the model together; only one batch of tiles' feature maps
exists at a time, so peak memory is the decoded image plus one batch, whatever the image's area.

Each tile's detections are shifted by its offset into the image's pixels, then merged across tiles
(:func:`merge_detections`): ``"greedy"`` (the default) fuses the fragments of a box cut by a tile border
into their union (:func:`fpn.ops.merge.greedy_merge_until_stable`); ``"nms"`` keeps the most confident of overlapping
boxes (class-wise NMS), which leaves a border-cut object as two fragments whose IoU is low. An object no
larger than the tiles' shared strip always lies whole in some tile, whose whole box absorbs the pieces; a
longer one is fused only when its pieces share more than ``merge_threshold`` of the smaller: pick ``overlap``
so that the strip (``overlap * size`` px) is at least the size of the objects sought. The optional
full-image pass (``full_image``) adds the objects too large for a tile; its detections are merged with the
tiles'. Each detection keeps its pyramid level and records its tile (``tiles [N, 4]``: x0, y0, x1, y1 in the
image's pixels; the full-image pass is marked with ``-1`` in every column).

The per-image cap of the model (``roi_heads.detections_per_image``) applies to each tile; the merged result
is not capped again (a scene may well hold thousands of objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fpn.detection import FasterRCNN
from fpn.errors import ConfigError
from fpn.ops.merge import greedy_merge_until_stable
from fpn.ops.nms import batched_nms

# A tile under the coarsest stride (P5's 32 px) would leave the coarse levels less than one cell across.
MIN_TILE = 32
MERGES = ("greedy", "nms")
FULL_IMAGE = -1  # the `tiles` row of a detection from the full-image pass


@dataclass(frozen=True)
class TileOptions:
    """How to tile: ``size`` px square tiles overlapping by at least ``overlap`` of a side, ``batch`` tiles per
    forward pass, merged by ``merge`` (``"greedy"``: IoS above ``merge_threshold``; ``"nms"``: IoU above it),
    plus a whole-image pass when ``full_image``."""

    size: int
    overlap: float = 0.2
    batch: int = 4
    merge: str = "greedy"
    merge_threshold: float = 0.5
    full_image: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < MIN_TILE:
            raise ConfigError(f"tile size must be a whole number of at least {MIN_TILE} px, got {self.size!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"tile overlap must be a fraction of the tile from 0 to under 1, got {self.overlap!r}")
        if self.size - math.ceil(self.overlap * self.size) < 1:
            raise ConfigError(f"tile overlap {self.overlap} leaves a {self.size} px tile no room to step; lower it")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"tile batch must be a whole number of at least 1, got {self.batch!r}")
        if self.merge not in MERGES:
            raise ConfigError(f"tile merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        if not 0.0 <= self.merge_threshold <= 1.0:
            raise ConfigError(f"tile merge threshold must be in 0..1, got {self.merge_threshold!r}")


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one side of ``length`` px (see the module's notes on the grid)."""
    if length <= size:
        return [0]
    step = size - math.ceil(overlap * size)
    count = -(-(length - size) // step) + 1
    # Even spread: consecutive starts differ by at most ceil((length - size) / (count - 1)) <= step.
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, size: int, overlap: float = 0.2) -> Tensor:
    """The tiles of an ``height x width`` image, int64 ``[T, 4]`` rows of (x0, y0, x1, y1), row by row."""
    ys, xs = tile_starts(height, size, overlap), tile_starts(width, size, overlap)
    th, tw = min(size, height), min(size, width)
    return torch.tensor([[x, y, x + tw, y + th] for y in ys for x in xs], dtype=torch.int64).reshape(-1, 4)


def run_tiles(model: FasterRCNN, image: Tensor, tiles: Tensor, batch: int) -> dict[str, Tensor]:
    """Detections of every tile of ``image`` (``[3, H, W]``, uint8 or float 0..1), in the image's pixels.

    ``tiles [T, 4]``; run ``batch`` at a time. Returns the model's keys (``boxes``, ``scores``, ``labels``,
    ``levels``) concatenated over tiles, plus ``tiles [N, 4]``, each detection's tile. Unmerged.
    """
    parts: list[dict[str, Tensor]] = []
    for chunk in tiles.split(batch):
        crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk.tolist()]
        for tile, out in zip(chunk, model(crops)):
            out = {k: v.cpu() for k, v in out.items()}
            offset = tile[:2].to(out["boxes"].dtype).repeat(2)
            out["boxes"] = out["boxes"] + offset
            out["tiles"] = tile.expand(len(out["boxes"]), 4).clone()
            parts.append(out)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def merge_detections(detections: dict[str, Tensor], merge: str = "greedy", threshold: float = 0.5) -> dict[str, Tensor]:
    """Detections gathered from overlapping tiles, merged across them (see the module's notes).

    Every key of ``detections`` (``boxes [N, 4]``, ``scores [N]``, ``labels [N]``, others ``[N, ...]``) is
    kept for the kept boxes; under ``"greedy"`` the box is the union of its group. Sorted by decreasing score.
    """
    boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
    if merge == "nms":
        keep = batched_nms(boxes, scores, labels, threshold)
        return {k: v[keep] for k, v in detections.items()}
    if merge != "greedy":
        raise ConfigError(f"tile merge must be one of {', '.join(MERGES)}, got {merge!r}")
    keep, union = greedy_merge_until_stable(boxes, scores, labels, threshold)
    out = {k: v[keep] for k, v in detections.items()}
    out["boxes"] = union
    return out


def detect_tiled(model: FasterRCNN, image: Tensor, options: TileOptions) -> dict[str, Tensor]:
    """Merged detections of one image ``[3, H, W]`` (uint8 or float 0..1) cut into tiles, in its pixels.

    The model must be in eval mode. Keys: the model's (``boxes``, ``scores``, ``labels``, ``levels``) and
    ``tiles [N, 4]`` (x0, y0, x1, y1 of the tile each detection came from; ``-1`` for the full-image pass).
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    found = run_tiles(model, image, tile_grid(height, width, options.size, options.overlap), options.batch)
    if options.full_image:
        whole = {k: v.cpu() for k, v in model([image])[0].items()}
        whole["tiles"] = torch.full((len(whole["boxes"]), 4), FULL_IMAGE, dtype=torch.int64)
        found = {k: torch.cat([found[k], whole[k]]) for k in found}
    return merge_detections(found, options.merge, options.merge_threshold)
