"""Training on tiles of large images, cut on the fly: what ``fpn train --tile SIZE`` learns from.

Tiled detection (:mod:`fpn.engine.tiling`) shows the model tiles at the scale its resize gives a tile, so a model
for it should learn from tiles too. Resizing a 4,000 px scene whole to the model's input would shrink its objects
below every anchor; cutting the dataset into tiles up front would need a preprocessing step and a second copy of
the data. :class:`TiledDataset` wraps any detection dataset (COCO, VOC, the synthetic sets) and cuts one tile
of ``size`` px per item as it is loaded:

- where: with probability ``object_p`` a tile centred on one of the image's objects (picked uniformly), its
  centre jittered by up to ``jitter`` of the tile so the object is not always in the middle; otherwise a
  uniformly random tile, so that some tiles hold no object and serve as negatives (scenes are mostly
  background, and so are the tiles tiled detection sees);
- boxes cut by the tile's border are clipped to it, and dropped when less than ``min_visible`` of their area
  remains (a sliver would teach the model that a fragment is a whole object);
- an image no larger than the tile along a side keeps that whole side, as in tiled detection's grid.

Determinism: the tile of an item depends only on a seed, :meth:`TiledDataset.sample` ``(index, seed)``; the
training loop passes one derived from the image's slot key ``(seed, iteration, slot)``, so a resumed run cuts
the same tiles. Plain indexing draws from ``(seed, epoch, index)`` (:meth:`set_epoch`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fpn.data.dataset import DetectionDataset, Target
from fpn.errors import ConfigError

MIN_TILE = 32  # under the coarsest stride's 32 px the coarse levels would be less than a cell across


def check_tile(size: Any, min_visible: float, object_p: float = 0.5) -> None:
    """Reject tiling settings no run can use, naming the key."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_TILE:
        raise ConfigError(f"train.tile must be a whole number of at least {MIN_TILE} px (or null), got {size!r}")
    if not 0.0 < min_visible <= 1.0:
        raise ConfigError(f"train.tile_min_visible must be a fraction in (0, 1], got {min_visible!r}")
    if not 0.0 <= object_p <= 1.0:
        raise ConfigError(f"tile object probability must be in [0, 1], got {object_p!r}")


def tile_origin(
    rng: np.random.Generator,
    height: int,
    width: int,
    boxes: np.ndarray,
    size: int,
    *,
    object_p: float = 0.5,
    jitter: float = 0.25,
) -> tuple[int, int, int, int]:
    """The ``(x0, y0, x1, y1)`` of a tile of ``size`` px (or the whole side where the image is smaller) inside a
    ``height x width`` image, centred on one of ``boxes`` (jittered) with probability ``object_p``."""
    tw, th = min(size, width), min(size, height)
    if len(boxes) and rng.random() < object_p:
        x1, y1, x2, y2 = boxes[rng.integers(len(boxes))]
        dx, dy = rng.uniform(-jitter, jitter, 2) * size
        x0 = math.floor(float(x1 + x2) / 2 + dx - tw / 2 + 0.5)
        y0 = math.floor(float(y1 + y2) / 2 + dy - th / 2 + 0.5)
    else:
        x0, y0 = int(rng.integers(width - tw + 1)), int(rng.integers(height - th + 1))
    x0, y0 = min(max(x0, 0), width - tw), min(max(y0, 0), height - th)
    return x0, y0, x0 + tw, y0 + th


def crop_boxes(
    boxes: torch.Tensor, tile: tuple[int, int, int, int], min_visible: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``boxes [N, 4]`` clipped to ``tile`` and shifted into its pixels, and the mask of those kept: the ones
    with at least ``min_visible`` of their area inside the tile."""
    x0, y0, x1, y1 = tile
    clipped = torch.stack(
        [boxes[:, 0].clamp(x0, x1), boxes[:, 1].clamp(y0, y1), boxes[:, 2].clamp(x0, x1), boxes[:, 3].clamp(y0, y1)],
        dim=1,
    )
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    keep = (inside > 0) & (inside >= min_visible * area)
    shift = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    return (clipped[keep] - shift).reshape(-1, 4), keep


class TiledDataset(Dataset):
    """One tile of ``size`` px per item of ``dataset``, its boxes clipped and filtered (see the module)."""

    def __init__(
        self,
        dataset: DetectionDataset,
        size: int,
        *,
        min_visible: float = 0.5,
        object_p: float = 0.5,
        jitter: float = 0.25,
        seed: int = 0,
    ) -> None:
        check_tile(size, min_visible, object_p)
        self.dataset = dataset
        self.size, self.min_visible, self.object_p, self.jitter = size, min_visible, object_p, jitter
        self.seed, self.epoch = seed, 0
        self.names = dataset.names
        self.category_ids = dataset.category_ids
        self.source = dataset.source

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Plain indexing cuts other tiles in another epoch."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        return self.sample(index, int(seed))

    def sample(self, index: int, seed: int) -> tuple[torch.Tensor, Target]:
        """Item ``index`` cut to a tile drawn from ``seed``: the same seed, the same tile."""
        rng = np.random.default_rng(seed)
        tiles: dict[int, tuple[int, int, int, int]] = {}

        def region(item: int) -> tuple[int, int, int, int]:
            # Drawn from the annotations' size (checked against the file's on loading), so only the tile of
            # the decoded image becomes float: 4 bytes a pixel for the tile, 1 a channel for the scene.
            record, boxes = self.dataset.records[item], self.dataset.target(item)["boxes"].numpy()
            tiles[item] = tile_origin(
                rng, record.height, record.width, boxes, self.size, object_p=self.object_p, jitter=self.jitter
            )
            return tiles[item]

        image, index = self.dataset.load_readable(index, region)
        target = self.dataset.target(index)
        tile = tiles[index]
        x0, y0, x1, y1 = tile
        boxes, keep = crop_boxes(target["boxes"], tile, self.min_visible)
        cut = dict(target, boxes=boxes, labels=target["labels"][keep], iscrowd=target["iscrowd"][keep])
        cut["orig_size"] = (y1 - y0, x1 - x0)
        if self.dataset.transform is not None:
            image, cut = self.dataset.transform(image, cut)
        return image, cut
