"""A built-in synthetic detection set, for when no real data can be downloaded.

It is designed to make the FPN paper's point in miniature:

- the classes differ by **shape and texture only** (every instance gets random colours drawn from the same
  distribution whatever its class), so a detector needs real features, not a colour lookup:

  ``ring`` (hollow ellipse), ``triangle`` (filled, any rotation), ``cross`` (plus sign, any rotation),
  ``striped_square`` (rectangle with two-colour stripes), ``checker_disc`` (ellipse with a checkerboard);

- objects sit on **cluttered backgrounds** (low-contrast blobs and lines, a gradient, pixel noise) among
  **distractors** that are not classes but look like near misses: solid discs (a ring without its hole, a
  checker disc without texture), solid rectangles (a striped square without stripes), hollow rectangles
  (a ring with corners), five-pointed stars and thick line segments;

- object sizes (the square root of the box area) are **log-uniform from 8 to 224 px**, so each of COCO's
  area buckets (small < 32², medium, large > 96²) holds roughly 40 / 33 / 25 % of the objects: small
  objects whose texture is only a few pixels wide are where high-resolution pyramid levels pay off.

Everything is drawn deterministically from a seed (each image from its own ``numpy`` Generator seeded by
``(seed, split, index)``, so the result does not depend on the order of generation) with Pillow's
``ImageDraw`` and ``numpy``, then written in COCO format with a ``data.yaml`` (see :mod:`fpn.data.spec`).
:func:`make_synthetic` caches the result: it regenerates only when the folder's ``manifest.json`` is missing
or records different parameters, and it writes into a temporary folder that is renamed into place, so an
interrupted run never leaves a half-written cache behind.

The COCO ``area`` of an object is its box area (there are no segmentations), which is also what decides its
size bucket in evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

from fpn.data.coco import read_json, write_coco, write_json
from fpn.data.shapes import box_for, log_uniform, paint
from fpn.errors import DataError

logger = logging.getLogger("fpn.data")

#: The object classes, in label order (label ``i + 1`` is ``CLASSES[i]``, category id ``i + 1``).
CLASSES: tuple[str, ...] = ("ring", "triangle", "cross", "striped_square", "checker_disc")
#: Shapes drawn as clutter that are not classes; they must be learned as background.
DISTRACTORS: tuple[str, ...] = ("disc", "rectangle", "frame", "star", "line")

# Bump when the drawing changes, so that caches made by an older version are regenerated.
GENERATOR_VERSION = 1

#: COCO's size buckets, by box area in pixels.
SMALL_AREA = 32**2
LARGE_AREA = 96**2


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic set; all of them are recorded in the cache manifest."""

    num_train: int = 1000
    num_val: int = 200
    image_size: int = 320
    seed: int = 0
    min_size: float = 8.0
    max_size: float = 224.0
    min_objects: int = 2
    max_objects: int = 6
    jpeg_quality: int = 95

    def check(self) -> None:
        """Reject parameters that cannot produce a sensible set."""
        if self.num_train < 0 or self.num_val < 0 or self.num_train + self.num_val == 0:
            raise DataError(f"synthetic: need a positive number of images, got {self.num_train} + {self.num_val}")
        if self.image_size < 32:
            raise DataError(f"synthetic: image_size must be at least 32, got {self.image_size}")
        if not 2 <= self.min_size < self.max_size <= self.image_size:
            raise DataError(
                f"synthetic: need 2 <= min_size < max_size <= image_size, got {self.min_size}, {self.max_size}"
            )
        if not 0 <= self.min_objects <= self.max_objects:
            raise DataError(
                f"synthetic: need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )


@dataclass(frozen=True)
class SyntheticObject:
    """One drawn object: its box (xyxy pixels) and label (``1..len(CLASSES)``)."""

    box: tuple[float, float, float, float]
    label: int


def render_image(
    rng: np.random.Generator, config: SyntheticConfig = SyntheticConfig()
) -> tuple[Image.Image, list[SyntheticObject]]:
    """Draw one image and return it with its objects (largest first)."""
    size = config.image_size
    base = rng.uniform(50, 205, 3).astype(np.float32)

    # Background: a gradient, then low-contrast blobs and lines drawn with ImageDraw.
    background = Image.new("RGB", (size, size), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(background)
    for _ in range(rng.integers(8, 17)):
        tint = tuple(int(v) for v in np.clip(base + rng.normal(0, 14, 3), 0, 255))
        r = log_uniform(rng, 8, size / 2)
        cx, cy = rng.uniform(-r, size + r, 2)
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r * rng.uniform(0.4, 1)], fill=tint)
        else:
            corners = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.sort(rng.uniform(0, 2 * math.pi, 5))]
            draw.polygon(corners, fill=tint)
    for _ in range(rng.integers(3, 9)):
        tint = tuple(int(v) for v in np.clip(base + rng.normal(0, 20, 3), 0, 255))
        draw.line([tuple(rng.uniform(0, size, 2)) for _ in range(2)], fill=tint, width=int(rng.integers(1, 4)))
    canvas = np.asarray(background, dtype=np.float32).copy()
    gy, gx = rng.normal(0, 12, 2)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    canvas += (gy * ramp[:, None] + gx * ramp[None, :])[..., None]

    # Distractors go underneath the objects, so they never hide part of one.
    for _ in range(rng.integers(1, 5)):
        kind = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        w, h = box_for(rng, log_uniform(rng, config.min_size, config.max_size * 0.75), size)
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        paint(canvas, rng, kind, (x, y, w, h), base)

    # Objects, largest first: a later (smaller) one may cover at most a quarter of an earlier one's box, so every
    # object stays recognisable, while small objects may still sit on large ones as in real scenes.
    wanted = []
    for _ in range(rng.integers(config.min_objects, config.max_objects + 1)):
        label = int(rng.integers(len(CLASSES))) + 1
        wanted.append((box_for(rng, log_uniform(rng, config.min_size, config.max_size), size), label))
    wanted.sort(key=lambda item: -item[0][0] * item[0][1])
    placed: list[SyntheticObject] = []
    for (w, h), label in wanted:
        for _ in range(30):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if all(_covered_fraction(obj.box, (x, y, x + w, y + h)) <= 0.25 for obj in placed):
                paint(canvas, rng, CLASSES[label - 1], (x, y, w, h), base)
                placed.append(SyntheticObject((float(x), float(y), float(x + w), float(y + h)), label))
                break

    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(2, 8)
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    return image, placed


def _covered_fraction(under: Sequence[float], over: Sequence[float]) -> float:
    """The fraction of box ``under``'s area that box ``over`` covers."""
    iw = min(under[2], over[2]) - max(under[0], over[0])
    ih = min(under[3], over[3]) - max(under[1], over[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((under[2] - under[0]) * (under[3] - under[1]))


# --- statistics ----------------------------------------------------------------------------------------------


def size_buckets(areas: Sequence[float]) -> dict[str, int]:
    """Counts of objects in COCO's small (< 32²), medium and large (> 96²) area buckets."""
    areas = np.asarray(areas, dtype=np.float64)
    small = int((areas < SMALL_AREA).sum())
    large = int((areas > LARGE_AREA).sum())
    return {"small": small, "medium": len(areas) - small - large, "large": large}


def size_histogram(areas: Sequence[float]) -> dict[str, int]:
    """Counts of objects by sqrt(area) in octaves: ``"<8"``, ``"8-16"``, ... ``"256+"``."""
    sides = np.sqrt(np.asarray(areas, dtype=np.float64))
    edges = [0, 8, 16, 32, 64, 128, 256, math.inf]
    counts = np.histogram(sides, bins=edges)[0]
    labels = ["<8", "8-16", "16-32", "32-64", "64-128", "128-256", "256+"]
    return {label: int(c) for label, c in zip(labels, counts, strict=True)}


def dataset_stats(annotations: Sequence[dict[str, Any]], num_images: int) -> dict[str, Any]:
    """Images, objects, size buckets, octave histogram and per-class counts of a COCO annotation list."""
    areas = [a["area"] for a in annotations]
    per_class = {name: 0 for name in CLASSES}
    for a in annotations:
        per_class[CLASSES[a["category_id"] - 1]] += 1
    return {
        "images": num_images,
        "objects": len(annotations),
        "buckets": size_buckets(areas),
        "histogram": size_histogram(areas),
        "classes": per_class,
    }


# --- writing and caching -------------------------------------------------------------------------------------

_SPLITS = ("train", "val")


def _write_split(folder: Path, split: str, count: int, config: SyntheticConfig) -> dict[str, Any]:
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        # One Generator per image, keyed by (seed, split, index): the set does not depend on generation order.
        rng = np.random.default_rng([config.seed, _SPLITS.index(split), index])
        image, objects = render_image(rng, config)
        file_name = f"{index + 1:06d}.jpg"
        image.save(folder / split / file_name, quality=config.jpeg_quality)
        images.append({"id": index + 1, "file_name": file_name, "width": image.width, "height": image.height})
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            annotations.append(
                {
                    "image_id": index + 1,
                    "category_id": obj.label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    write_coco(folder / f"{split}.json", images, annotations, categories)
    return dataset_stats(annotations, len(images))


def _manifest_params(config: SyntheticConfig) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, **asdict(config)}


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except DataError:
        return None  # an unreadable manifest means an unusable cache: regenerate it
    return manifest if isinstance(manifest, dict) else None


def synthetic_stats(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The statistics recorded when the set under ``root`` was generated (per split, see :func:`dataset_stats`)."""
    manifest = _read_manifest(Path(root))
    if manifest is None:
        raise DataError(f"{root}: not a synthetic data set (no readable manifest.json)")
    return manifest["stats"]


def make_synthetic(
    root: str | os.PathLike[str],
    *,
    num_train: int = SyntheticConfig.num_train,
    num_val: int = SyntheticConfig.num_val,
    image_size: int = SyntheticConfig.image_size,
    seed: int = SyntheticConfig.seed,
    min_size: float = SyntheticConfig.min_size,
    max_size: float | None = None,
    min_objects: int = SyntheticConfig.min_objects,
    max_objects: int = SyntheticConfig.max_objects,
) -> Path:
    """Generate the synthetic set under ``root`` (or reuse it) and return the path of its ``data.yaml``.

    ``max_size`` defaults to ``0.7 * image_size`` (224 px for 320 px images). The folder holds ``train/`` and
    ``val/`` (JPEG, quality 95), ``train.json``, ``val.json``, ``data.yaml`` and ``manifest.json`` (the
    parameters and the statistics of :func:`dataset_stats`). It is regenerated only if the manifest is
    missing or its parameters differ. A folder that exists but is not such a cache is never overwritten.
    """
    root = Path(root).expanduser()
    if max_size is None:
        max_size = round(0.7 * image_size, 2)
    config = SyntheticConfig(
        num_train=num_train,
        num_val=num_val,
        image_size=image_size,
        seed=seed,
        min_size=float(min_size),
        max_size=float(max_size),
        min_objects=min_objects,
        max_objects=max_objects,
    )
    config.check()
    origin = "Synthetic shapes data set generated by fpn.data.synthetic"
    return write_cached_set(root, _manifest_params(config), lambda folder: _write_splits(folder, config), origin)


def _write_splits(folder: Path, config: SyntheticConfig) -> dict[str, Any]:
    """Both splits into ``folder``, logged (only a generation is: a reused cache says nothing)."""
    start = time.perf_counter()
    counts = (config.num_train, config.num_val)
    stats = {split: _write_split(folder, split, n, config) for split, n in zip(_SPLITS, counts, strict=True)}
    seconds = time.perf_counter() - start
    for split in _SPLITS:
        s = stats[split]
        logger.info(
            "synthetic %s: %d images, %d objects, small/medium/large %d/%d/%d, generated in %.1f s",
            split,
            s["images"],
            s["objects"],
            s["buckets"]["small"],
            s["buckets"]["medium"],
            s["buckets"]["large"],
            seconds,
        )
    return stats


def write_cached_set(
    root: Path, params: dict[str, Any], write_splits: Callable[[Path], dict[str, Any]], origin: str
) -> Path:
    """A built-in set's cache under ``root``: reused when its manifest records ``params``, else written.

    ``write_splits(folder)`` writes ``train/``, ``val/``, ``train.json`` and ``val.json`` into ``folder`` and
    returns their statistics; here the ``data.yaml`` (its first line a comment naming ``origin``) and
    ``manifest.json`` are added, in a temporary folder renamed into place. Returns the ``data.yaml``.
    Only a folder with a manifest (even a corrupt one) is ours to replace; never a user's folder.
    """
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("params") == params and (root / "data.yaml").is_file():
        return root / "data.yaml"
    if root.exists() and not (root / "manifest.json").is_file() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root}: exists and is not a synthetic data set cache (no manifest.json); choose another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        stats = write_splits(temporary)
        spec = {
            "format": "coco",
            "names": list(CLASSES),
            "train": {"annotations": "train.json", "images": "train"},
            "val": {"annotations": "val.json", "images": "val"},
        }
        (temporary / "data.yaml").write_text(
            f"# {origin}; see manifest.json for its parameters.\n"
            + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None),
            encoding="utf-8",
        )
        write_json(temporary / "manifest.json", {"params": params, "stats": stats})
        _swap_into_place(temporary, root, params)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return root / "data.yaml"


def _swap_into_place(temporary: Path, root: Path, params: dict[str, Any]) -> None:
    """Rename the finished folder to ``root``, replacing an outdated cache; tolerate a concurrent writer."""
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(root, old)
    try:
        os.replace(temporary, root)
    except OSError:
        # Another process put a cache in place between the two renames; use it if it is the one we want.
        manifest = _read_manifest(root)
        if manifest is None or manifest.get("params") != params:
            raise DataError(f"{root}: could not replace the synthetic data set cache (written concurrently?)") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
