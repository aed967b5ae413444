"""Do a model's anchors and RoI levels fit a data set's objects? Sizes, coverage, and a plain-language note.

Object sizes are measured as ``sqrt(w * h)`` in the pixels the model sees (after its resize). For each
object we also compute the best IoU any anchor shape (size x aspect ratio, centred on the object) can reach:
an object whose best IoU is below the RPN's positive threshold (0.7) is found only through the matcher's
"best anchor" fallback, and below 0.5 it is poorly served; small objects under the smallest anchor are the
usual case, and the fix is smaller anchors (the paper's point: FPN makes fine levels worth using).

The other fix is tiling (:func:`recommend_tile`): cut the images into tiles of ``T`` native pixels, which the
model's resize enlarges by ``min_size / T``. The rule: the 10th percentile of object sizes should reach at least
half the smallest anchor after that resize (half, because the note above calls objects under half the smallest
anchor poorly served: the rule leaves at most about a tenth of them there). So ``T`` is the largest multiple of
32 whose scale brings that percentile up to the target, clamped to ``[min_size / 4, image side]``. Tiling is not
needed when the model's normal resize already gets there; a tile under ``min_size`` means an input scale > 1
(the tile is enlarged), where smaller anchors are the alternative; and when even the smallest tile falls short,
smaller anchors are the only way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fpn.config import ModelConfig
from fpn.data.dataset import DetectionDataset


@dataclass
class AnchorFit:
    sizes: np.ndarray  # [M] object sizes sqrt(wh) in model pixels
    best_iou: np.ndarray  # [M] best IoU of a centred anchor shape
    anchor_sizes: list[float]
    level_ranges: dict[str, tuple[float, float]]  # RoI level -> size range the paper's rule assigns to it
    notes: list[str]
    tile: TileAdvice | None = field(default=None)

    def summary(self) -> dict:
        count = len(self.sizes)
        return {
            "objects": count,
            "size_percentiles": {p: round(float(np.percentile(self.sizes, p)), 1) for p in (1, 10, 50, 90, 99)}
            if count
            else {},
            "best_iou_below_0.5": int((self.best_iou < 0.5).sum()),
            "best_iou_below_0.7": int((self.best_iou < 0.7).sum()),
            "anchor_sizes": self.anchor_sizes,
            "roi_levels": {k: [round(a, 1), round(b, 1)] for k, (a, b) in self.level_ranges.items()},
            "notes": self.notes,
            "suggested_tile": None if self.tile is None else self.tile.summary(),
        }


@dataclass(frozen=True)
class TileAdvice:
    """A tile size for ``--tile`` (``None``: tiling not needed or nothing to measure), the scale the model's resize
    then applies, the object size it reaches, and the sentence that says why."""

    tile: int | None
    scale: float
    reached: float
    line: str

    def summary(self) -> dict:
        return {
            "tile": self.tile,
            "scale": round(self.scale, 3),
            "reached_px": round(self.reached, 1),
            "why": self.line,
        }


def recommend_tile(
    native: np.ndarray,
    model: np.ndarray,
    image_side: int,
    min_size: int,
    smallest_anchor: float,
    *,
    percentile: float = 10.0,
    fraction: float = 0.5,
    want: str | None = None,
    alternative: str | None = None,
) -> TileAdvice:
    """The tile size ``T`` whose resize (scale ``min_size / T``) brings the ``percentile`` of object sizes
    (``native``: native pixels) to ``fraction`` of ``smallest_anchor``; ``model`` are the same objects at the
    model's normal resize, which decides whether tiling is needed at all."""
    target = fraction * smallest_anchor
    if want is None:
        want = f"half the smallest anchor ({smallest_anchor:g} px)" if fraction == 0.5 else f"{target:g} px"
    if len(native) == 0:
        return TileAdvice(None, 1.0, 0.0, "suggested: no tile (no objects to measure)")
    p_native, p_model = float(np.percentile(native, percentile)), float(np.percentile(model, percentile))
    name = f"objects' {percentile:g}th percentile"
    if p_model >= target:
        return TileAdvice(
            None,
            p_model / p_native,
            p_model,
            f"suggested: no tiling needed ({name} is {p_model:.1f} px at the model's normal resize, at least {want})",
        )
    low = max(32, 32 * math.ceil(min_size / 4 / 32))
    tile = 32 * math.floor(min_size * p_native / target / 32)  # the largest multiple of 32 that reaches the target
    tile = min(tile, max(32 * (image_side // 32), low))  # no larger than the images (the max_size cap made up)
    smaller = alternative or f"anchors.sizes=[{smallest_anchor / 2:g}, ...]"
    if tile < low:
        scale = min_size / low
        return TileAdvice(
            low,
            scale,
            p_native * scale,
            f"suggested: --tile {low} and smaller anchors ({name} {p_native:.1f} px"
            f" -> only {p_native * scale:.1f} px at the smallest tile's scale {scale:.2f},"
            f" under {want}: add {smaller})",
        )
    scale = min_size / tile
    enlarged = f"; input scale > 1, the tile is enlarged: {smaller} is the alternative" if scale > 1 else ""
    return TileAdvice(
        tile,
        scale,
        p_native * scale,
        f"suggested: --tile {tile} ({name} {p_native:.1f} px -> {p_native * scale:.1f} px"
        f" at the model's scale {scale:.2f}, at least {want}{enlarged})",
    )


def object_sizes(
    dataset: DetectionDataset, config: ModelConfig, *, native: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights ``[M]`` of every object, scaled as the model's test-time resize scales its image
    (``native``: in the image's own pixels)."""
    shorter, longest = config.transform.min_size[-1], config.transform.max_size
    widths, heights = [], []
    for record in dataset.records:
        if len(record.boxes) == 0:
            continue
        scale = min(shorter / min(record.height, record.width), longest / max(record.height, record.width))
        scale = 1.0 if native else scale
        widths.append((record.boxes[:, 2] - record.boxes[:, 0]) * scale)
        heights.append((record.boxes[:, 3] - record.boxes[:, 1]) * scale)
    if not widths:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(widths), np.concatenate(heights)


def centred_iou(w: np.ndarray, h: np.ndarray, aw: np.ndarray, ah: np.ndarray) -> np.ndarray:
    """IoU of boxes ``w x h`` with anchors ``aw x ah`` sharing their centre: ``[M, A]``."""
    inter = np.minimum(w[:, None], aw[None]) * np.minimum(h[:, None], ah[None])
    return inter / (w[:, None] * h[:, None] + aw[None] * ah[None] - inter)


def fit(
    dataset: DetectionDataset,
    config: ModelConfig,
    pool_levels: list[int],
    *,
    anchor_sizes: list[float] | None = None,
    level_ranges: dict[str, tuple[float, float]] | None = None,
) -> AnchorFit:
    """Measure how ``config``'s anchors and RoI levels (indices ``pool_levels``) cover ``dataset``'s objects.

    A one-stage detector has no RoI levels: it passes its own ``anchor_sizes`` (every level's, e.g. RetinaNet's
    three per octave) and ``level_ranges`` (the object sizes each level's anchors serve) instead.
    """
    w, h = object_sizes(dataset, config)
    sizes = np.sqrt(w * h)
    ratios = np.asarray(config.anchors.aspect_ratios, dtype=np.float64)
    scales = np.asarray(anchor_sizes if anchor_sizes is not None else config.anchors.sizes, dtype=np.float64)
    aw = (scales[None, :] / np.sqrt(ratios)[:, None]).reshape(-1)  # aspect ratio = h / w, area = size^2
    ah = (scales[None, :] * np.sqrt(ratios)[:, None]).reshape(-1)
    best = centred_iou(w, h, aw, ah).max(axis=1) if len(w) else np.zeros(0)
    roi = config.roi_heads
    ranges = dict(level_ranges or {})
    for k in pool_levels if level_ranges is None else []:
        low = roi.canonical_size * 2.0 ** (k - roi.canonical_level)
        ranges[f"p{k}"] = (0.0 if k == pool_levels[0] else low, np.inf if k == pool_levels[-1] else 2 * low)
    notes = []
    smallest, largest = float(scales.min()), float(scales.max())
    if len(sizes):
        tiny = int((sizes < smallest / 2).sum())
        if tiny:
            notes.append(
                f"{tiny} objects ({100 * tiny / len(sizes):.0f}%) are under half the smallest anchor ({smallest:g} px):"
                f" add smaller anchors, e.g. anchors.sizes=[{smallest / 2:g}, ...], or enlarge the images"
                " (transform.min_size)"
            )
        huge = int((sizes > largest * 2).sum())
        if huge:
            notes.append(f"{huge} objects are over twice the largest anchor ({largest:g} px): add a larger anchor size")
        poor = int((best < 0.5).sum())
        if poor:
            notes.append(
                f"{poor} objects ({100 * poor / len(sizes):.0f}%) reach IoU < 0.5 with every anchor shape:"
                " consider other aspect ratios or sizes"
            )
    if not notes:
        notes.append("every object is within reach of an anchor shape (best IoU >= 0.5)")
    nw, nh = object_sizes(dataset, config, native=True)
    sides = [min(r.height, r.width) for r in dataset.records if len(r.boxes)]
    side = int(np.median(sides)) if sides else 0
    tile = recommend_tile(np.sqrt(nw * nh), sizes, side, config.transform.min_size[-1], smallest)
    return AnchorFit(sizes, best, [float(s) for s in scales], ranges, notes, tile)


def fit_anchor_free(
    dataset: DetectionDataset, config: ModelConfig, reach: dict[str, tuple[float, float]], finest_stride: int
) -> AnchorFit:
    """The same measure for an anchor-free detector (FCOS): no anchor shapes, levels by the distances they regress.

    ``reach``: per level, the range of ``max(l, t, r, b)`` its locations answer for (px); a location at the
    centre of a square object of side ``s`` regresses ``s / 2``, so the level serves objects of ``2 x`` that
    range. An object under the finest level's stride may hold no location at all: the tiling rule brings the
    objects' 10th percentile up to that stride.
    """
    sizes = np.sqrt(np.prod(object_sizes(dataset, config), axis=0)) if dataset.records else np.zeros(0)
    ranges = {name: (2 * low, 2 * high) for name, (low, high) in reach.items()}
    notes = []
    tiny = int((sizes < finest_stride).sum())
    if tiny:
        notes.append(
            f"{tiny} objects ({100 * tiny / len(sizes):.0f}%) are under the finest level's stride ({finest_stride} px):"
            " few or no locations fall inside them; enlarge the images (transform.min_size) or tile"
        )
    bands = ", ".join(_band(name, band) for name, band in ranges.items())
    notes.append(f"anchor-free: no anchor shapes to fit; the levels serve objects of {bands}")
    nw, nh = object_sizes(dataset, config, native=True)
    sides = [min(r.height, r.width) for r in dataset.records if len(r.boxes)]
    side = int(np.median(sides)) if sides else 0
    want = f"the finest level's stride ({finest_stride} px)"
    shorter = config.transform.min_size[-1]
    tile = recommend_tile(
        np.sqrt(nw * nh), sizes, side, shorter, 2.0 * finest_stride, want=want,
        alternative=f"a larger transform.min_size (now {shorter})",
    )  # fmt: skip
    return AnchorFit(sizes, np.ones(len(sizes)), [], ranges, notes, tile)


def _band(name: str, band: tuple[float, float]) -> str:
    low, high = band
    return f"{name} {low:g}-{high:g} px" if np.isfinite(high) else f"{name} {low:g}+ px"


def fit_figure(result: AnchorFit, title: str) -> plt.Figure:
    """Histogram of object sizes (log scale) with anchor sizes as lines and RoI levels as bands."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    if len(result.sizes):
        low = max(1.0, float(result.sizes.min()) / 1.2)
        high = max(float(result.sizes.max()) * 1.2, max(result.anchor_sizes, default=0.0) * 1.5)
        bins = np.geomspace(low, high, 40)
        colours = plt.cm.tab10(np.arange(len(result.level_ranges)))
        for colour, (name, (a, b)) in zip(colours, result.level_ranges.items()):
            ax.axvspan(max(a, low), min(b, high), color=colour, alpha=0.12, label=f"RoIs pooled from {name}")
        ax.hist(result.sizes, bins=bins, color="0.3", label="objects")
        for i, size in enumerate(result.anchor_sizes):
            ax.axvline(size, color="crimson", linestyle="--", label="anchor sizes" if i == 0 else None)
        ax.set_xscale("log")
    ax.set_xlabel("object size sqrt(w*h), in the model's resized pixels")
    ax.set_ylabel("objects")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
