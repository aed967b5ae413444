"""A built-in set of large scenes with small objects (``synthetic-large``): what tiled detection is for.

Aerial, satellite and microscopy images are thousands of pixels across with objects of a few dozen. This set
draws the same classes, distractors and clutter as :mod:`fpn.data.synthetic` (its drawing code, imported),
at that ratio:

- ``val``: a few scenes of 2,048-4,096 px a side (each side drawn on its own), the images a tiled detector
  is evaluated on whole, in their own coordinates;
- ``train``: many crops of ``train_side`` px (512 by default) drawn by the same generator, the tiles a model
  learns from (a tile of the model's input size, so that training sees objects at the scale tiled detection
  feeds them);
- objects of 6-40 px (the square root of the box area, log-uniform), each in its own cell of a jittered grid
  of ``cell`` px, so they never overlap and placing hundreds costs no pairwise check; about one cell in
  ``1 / fill`` holds an object, one in six a distractor.

Deterministic (each image from its own Generator seeded by ``(seed, split, index)``) and cached like the
synthetic set: regenerated only when ``manifest.json`` is missing or records other parameters, written into
a temporary folder renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fpn.data.coco import write_coco
from fpn.data.shapes import box_for, log_uniform, paint
from fpn.data.synthetic import CLASSES, DISTRACTORS, dataset_stats, write_cached_set
from fpn.errors import DataError

GENERATOR_VERSION = 1
_SPLITS = ("train", "val")


@dataclass(frozen=True)
class LargeScenesConfig:
    """Parameters of the large-scene set; all of them are recorded in the cache manifest."""

    num_train: int = 400
    num_val: int = 8
    train_side: int = 512
    min_side: int = 2048
    max_side: int = 4096
    min_size: float = 6.0
    max_size: float = 40.0
    cell: int = 96
    fill: float = 0.35
    seed: int = 0
    jpeg_quality: int = 95

    def check(self) -> None:
        """Reject parameters that cannot produce a sensible set."""
        if self.num_train < 0 or self.num_val < 0 or self.num_train + self.num_val == 0:
            raise DataError(f"synthetic-large: need a positive number of images, got {self.num_train} + {self.num_val}")
        if not 32 <= self.min_side <= self.max_side or self.train_side < 32:
            raise DataError(f"synthetic-large: need 32 <= min_side <= max_side and train_side >= 32, got {self}")
        if not 2 <= self.min_size < self.max_size <= self.cell <= min(self.train_side, self.min_side):
            raise DataError(f"synthetic-large: need 2 <= min_size < max_size <= cell <= the sides, got {self}")
        if not 0.0 < self.fill <= 1.0:
            raise DataError(f"synthetic-large: fill must be in (0, 1], got {self.fill}")


def render_scene(
    rng: np.random.Generator, height: int, width: int, config: LargeScenesConfig = LargeScenesConfig()
) -> tuple[Image.Image, list[tuple[tuple[float, float, float, float], int]]]:
    """One ``height x width`` scene and its objects, ``((x1, y1, x2, y2), label)`` in row-major cell order."""
    base = rng.uniform(50, 205, 3).astype(np.float32)
    background = Image.new("RGB", (width, height), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(background)
    # Clutter at the density of the 320 px synthetic images: blobs and lines per unit of area.
    area_units = height * width / 320**2
    for _ in range(int(rng.integers(8, 17) * area_units)):
        tint = tuple(int(v) for v in np.clip(base + rng.normal(0, 14, 3), 0, 255))
        r = log_uniform(rng, 8, 160)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r * rng.uniform(0.4, 1)], fill=tint)
    for _ in range(int(rng.integers(3, 9) * area_units)):
        tint = tuple(int(v) for v in np.clip(base + rng.normal(0, 20, 3), 0, 255))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        dx, dy = rng.normal(0, 100, 2)
        draw.line([(x, y), (x + dx, y + dy)], fill=tint, width=int(rng.integers(1, 4)))
    canvas = np.asarray(background, dtype=np.float32).copy()
    gy, gx = rng.normal(0, 12, 2)
    canvas += (gy * np.linspace(-1, 1, height, dtype=np.float32)[:, None, None]).astype(np.float32)
    canvas += (gx * np.linspace(-1, 1, width, dtype=np.float32)[None, :, None]).astype(np.float32)

    objects = []
    cell = config.cell
    for top in range(0, height - cell + 1, cell):
        for left in range(0, width - cell + 1, cell):
            draw_what = rng.random()
            if draw_what < config.fill:
                label = int(rng.integers(len(CLASSES))) + 1
                kind = CLASSES[label - 1]
            elif draw_what < config.fill + 1 / 6:
                label, kind = 0, DISTRACTORS[rng.integers(len(DISTRACTORS))]
            else:
                continue
            w, h = box_for(rng, log_uniform(rng, config.min_size, config.max_size), cell)
            x, y = left + int(rng.integers(0, cell - w + 1)), top + int(rng.integers(0, cell - h + 1))
            paint(canvas, rng, kind, (x, y, w, h), base)
            if label:
                objects.append(((float(x), float(y), float(x + w), float(y + h)), label))
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(2, 8)
    np.clip(canvas + 0.5, 0, 255, out=canvas)
    return Image.fromarray(canvas.astype(np.uint8), mode="RGB"), objects


def _write_split(folder: Path, split: str, count: int, config: LargeScenesConfig) -> dict[str, Any]:
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([config.seed, _SPLITS.index(split), index])
        if split == "train":
            height = width = config.train_side
        else:
            height, width = (int(v) for v in rng.integers(config.min_side, config.max_side + 1, 2))
        image, objects = render_scene(rng, height, width, config)
        file_name = f"{index + 1:06d}.jpg"
        image.save(folder / split / file_name, quality=config.jpeg_quality)
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for (x1, y1, x2, y2), label in objects:
            annotations.append({"image_id": index + 1, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})  # fmt: skip
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    write_coco(folder / f"{split}.json", images, annotations, categories)
    return dataset_stats(annotations, len(images))


def make_large_scenes(root: str | os.PathLike[str], config: LargeScenesConfig = LargeScenesConfig()) -> Path:
    """Generate the large-scene set under ``root`` (or reuse it) and return the path of its ``data.yaml``.

    The folder holds ``train/`` and ``val/`` (JPEG), ``train.json``, ``val.json``, ``data.yaml`` and
    ``manifest.json``. A folder that exists but is not such a cache is never overwritten.
    """
    config.check()
    params = {"generator": "large_scenes", "generator_version": GENERATOR_VERSION, **asdict(config)}

    def write_splits(folder: Path) -> dict[str, Any]:
        counts = (config.num_train, config.num_val)
        return {split: _write_split(folder, split, n, config) for split, n in zip(_SPLITS, counts, strict=True)}

    origin = "Large synthetic scenes generated by fpn.data.large_scenes"
    return write_cached_set(Path(root).expanduser(), params, write_splits, origin)
