"""Drawing the synthetic sets' shapes: anti-aliased masks, textures and colours, on numpy arrays.

Used by :mod:`fpn.data.synthetic` (the small-image set) and :mod:`fpn.data.large_scenes` (the large scenes);
every function draws from the ``numpy`` Generator it is given, so a set is the same wherever it is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# --- drawing -------------------------------------------------------------------------------------------------
#
# Each shape is drawn as one or two coverage masks on a grid `ss` times finer than its box and averaged down
# (anti-aliasing), so that an 8 px object still shows its hole, stripes or checks as intermediate values
# rather than as aliasing noise. The masks span the whole box: the box is tight by construction.


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in 0..1 across a ``h x w`` grid (y, x)."""
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    return ys[:, None], xs[None, :]


def downsample(mask: np.ndarray, ss: int) -> np.ndarray:
    h, w = mask.shape[0] // ss, mask.shape[1] // ss
    return mask.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)


def polygon_mask(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """Fill a polygon given in 0..1 box coordinates (rotated and stretched to touch all four sides)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    unit = (points - lo) / np.maximum(hi - lo, 1e-6)
    scaled = unit * np.array([w, h], np.float32)
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in scaled], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], np.float32)


def star(points: int, inner: float) -> np.ndarray:
    angles = np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.sin(angles), -radii * np.cos(angles)], axis=1).astype(np.float32)


def cross(thickness: float) -> np.ndarray:
    a, b = 0.5 - thickness / 2, 0.5 + thickness / 2
    return np.array(
        [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)],
        np.float32,
    )


def texture(rng: np.random.Generator, h: int, w: int, checker: bool) -> np.ndarray:
    """Stripes or a checkerboard at a random angle, with 4-6 bands across the box (0/1 mask)."""
    y, x = grid(h, w)
    angle = rng.uniform(0, math.pi)
    bands = rng.integers(4, 7)
    # Measure in units of the box so that the band count, not the band width, is what stays fixed.
    u = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    if not checker:
        return (np.floor(u * bands) % 2).astype(np.float32)
    v = -(x - 0.5) * math.sin(angle) + (y - 0.5) * math.cos(angle)
    return ((np.floor(u * bands) + np.floor(v * bands)) % 2).astype(np.float32)


def ellipse(h: int, w: int, scale: float = 1.0) -> np.ndarray:
    y, x = grid(h, w)
    return (((x - 0.5) ** 2 + (y - 0.5) ** 2) <= (0.5 * scale) ** 2).astype(np.float32)


def shape_masks(rng: np.random.Generator, kind: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Coverage masks at grid size ``h x w``: the shape, and the part of it in the second colour (if any)."""
    if kind in ("ring", "disc", "checker_disc"):
        outer = ellipse(h, w)
        if kind == "ring":
            return outer * (1.0 - ellipse(h, w, rng.uniform(0.45, 0.7))), None
        if kind == "checker_disc":
            return outer, outer * texture(rng, h, w, checker=True)
        return outer, None
    if kind in ("striped_square", "rectangle"):
        full = np.ones((h, w), np.float32)
        return full, (texture(rng, h, w, checker=False) if kind == "striped_square" else None)
    if kind == "frame":
        t = rng.uniform(0.12, 0.25)
        y, x = grid(h, w)
        inner = (np.abs(x - 0.5) < 0.5 - t) & (np.abs(y - 0.5) < 0.5 - t)
        return 1.0 - inner.astype(np.float32), None
    if kind == "triangle":
        corners = np.array([(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)], np.float32)
        return polygon_mask(rotate(corners, rng.uniform(0, 2 * math.pi)), h, w), None
    if kind == "cross":
        return polygon_mask(rotate(cross(rng.uniform(0.28, 0.4)) - 0.5, rng.uniform(0, math.pi / 2)), h, w), None
    if kind == "star":
        return polygon_mask(rotate(star(5, rng.uniform(0.38, 0.5)), rng.uniform(0, 2 * math.pi)), h, w), None
    if kind == "line":
        # A thick segment along one diagonal of its box: distance in grid pixels to the diagonal.
        y, x = grid(h, w)
        if rng.random() < 0.5:
            x = 1.0 - x
        distance = np.abs(x - y) * (w * h / math.hypot(w, h))
        return (distance <= rng.uniform(0.04, 0.1) * min(h, w)).astype(np.float32), None
    raise ValueError(f"unknown shape {kind!r}")


def colour(rng: np.random.Generator, avoid: Sequence[np.ndarray], distance: float = 90.0) -> np.ndarray:
    """A uniformly random RGB colour at least ``distance`` away from each colour in ``avoid`` (best effort)."""
    best, best_gap = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        gap = min((float(np.linalg.norm(colour - a)) for a in avoid), default=math.inf)
        if gap >= distance:
            return colour
        if gap > best_gap:
            best, best_gap = colour, gap
    return best  # type: ignore[return-value]


def paint(
    canvas: np.ndarray, rng: np.random.Generator, kind: str, box: tuple[int, int, int, int], base: np.ndarray
) -> None:
    """Composite one shape with random colours into ``canvas`` (float32 HxWx3) at integer box ``x, y, w, h``."""
    x, y, w, h = box
    ss = 4 if min(w, h) < 32 else 2 if min(w, h) < 96 else 1
    shape, second = shape_masks(rng, kind, h * ss, w * ss)
    first_colour = colour(rng, [base])
    region = canvas[y : y + h, x : x + w]
    alpha = downsample(shape, ss)[..., None]
    region *= 1.0 - alpha
    region += alpha * first_colour
    if second is not None:
        beta = downsample(second, ss)[..., None]
        second_colour = colour(rng, [first_colour])
        region *= 1.0 - beta
        region += beta * second_colour


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def box_for(rng: np.random.Generator, size: float, image_size: int) -> tuple[int, int]:
    """Width and height of a box whose sqrt(area) is about ``size``, with aspect ratio between 2:3 and 3:2."""
    aspect = log_uniform(rng, 2 / 3, 3 / 2)
    w = round(min(size * math.sqrt(aspect), image_size))
    h = round(min(size / math.sqrt(aspect), image_size))
    return max(w, 2), max(h, 2)
