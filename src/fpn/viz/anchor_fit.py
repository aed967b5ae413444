"""Do a model's anchors and RoI levels fit a data set's objects? Sizes, coverage, and a plain-language note.

Object sizes are measured as ``sqrt(w * h)`` in the pixels the model sees (after its resize). For each
object we also compute the best IoU any anchor shape (size x aspect ratio, centred on the object) can reach:
an object whose best IoU is below the RPN's positive threshold (0.7) is found only through the matcher's
"best anchor" fallback, and below 0.5 it is poorly served; small objects under the smallest anchor are the
usual case, and the fix is smaller anchors (the paper's point: FPN makes fine levels worth using).
"""

from __future__ import annotations

from dataclasses import dataclass

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
        }


def object_sizes(dataset: DetectionDataset, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights ``[M]`` of every object, scaled as the model's test-time resize scales its image."""
    shorter, longest = config.transform.min_size[-1], config.transform.max_size
    widths, heights = [], []
    for record in dataset.records:
        if len(record.boxes) == 0:
            continue
        scale = min(shorter / min(record.height, record.width), longest / max(record.height, record.width))
        widths.append((record.boxes[:, 2] - record.boxes[:, 0]) * scale)
        heights.append((record.boxes[:, 3] - record.boxes[:, 1]) * scale)
    if not widths:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(widths), np.concatenate(heights)


def centred_iou(w: np.ndarray, h: np.ndarray, aw: np.ndarray, ah: np.ndarray) -> np.ndarray:
    """IoU of boxes ``w x h`` with anchors ``aw x ah`` sharing their centre: ``[M, A]``."""
    inter = np.minimum(w[:, None], aw[None]) * np.minimum(h[:, None], ah[None])
    return inter / (w[:, None] * h[:, None] + aw[None] * ah[None] - inter)


def fit(dataset: DetectionDataset, config: ModelConfig, pool_levels: list[int]) -> AnchorFit:
    """Measure how ``config``'s anchors and RoI levels (indices ``pool_levels``) cover ``dataset``'s objects."""
    w, h = object_sizes(dataset, config)
    sizes = np.sqrt(w * h)
    ratios = np.asarray(config.anchors.aspect_ratios, dtype=np.float64)
    scales = np.asarray(config.anchors.sizes, dtype=np.float64)
    aw = (scales[None, :] / np.sqrt(ratios)[:, None]).reshape(-1)  # aspect ratio = h / w, area = size^2
    ah = (scales[None, :] * np.sqrt(ratios)[:, None]).reshape(-1)
    best = centred_iou(w, h, aw, ah).max(axis=1) if len(w) else np.zeros(0)
    roi = config.roi_heads
    ranges = {}
    for k in pool_levels:
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
    return AnchorFit(sizes, best, [float(s) for s in scales], ranges, notes)


def fit_figure(result: AnchorFit, title: str) -> plt.Figure:
    """Histogram of object sizes (log scale) with anchor sizes as lines and RoI levels as bands."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    if len(result.sizes):
        low = max(1.0, float(result.sizes.min()) / 1.2)
        high = max(float(result.sizes.max()) * 1.2, max(result.anchor_sizes) * 1.5)
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
