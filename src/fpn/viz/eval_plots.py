"""The plots people read after an evaluation, drawn from :func:`fpn.engine.eval_curves.curves`' numbers.

:func:`write_eval_plots` writes, into one folder (beside ``metrics.json``):

==========================  =============  =============================================================
file                        size (px)      what
==========================  =============  =============================================================
``pr_curves.png``           1200 x 900     precision against recall; top row at IoU 0.5, bottom row
                                           averaged over IoU 0.5:0.95; left per class, right per size
                                           bucket (all classes); each legend entry's number is the
                                           curve's area, which is its AP (AP50 / AP, APs, ...)
``f1_curve.png``            900 x 600      F1 against score threshold at IoU 0.5, per class and their
                                           mean, with the best threshold marked and stated
``confusion_matrix.png``    S x S          true class (rows) against predicted class (columns), with
                                           background; S = 100 * max(6, 3 + 0.5 * (classes + 1))
``val_grid.png``            see            the first val images, ground truth beside predictions
                            :mod:`~fpn.viz.val_grid`
==========================  =============  =============================================================

Curves are drawn with matplotlib (a dependency already, for ``curves.png`` and ``fpn compare``'s figures),
at 100 dpi on fixed-size figures, so the sizes above are exact.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpn.viz.save import save_picture

PR_FILE, F1_FILE, CONFUSION_FILE, GRID_FILE = "pr_curves.png", "f1_curve.png", "confusion_matrix.png", "val_grid.png"
PLOT_FILES = (PR_FILE, F1_FILE, CONFUSION_FILE, GRID_FILE)
DPI = 100
PR_SIZE = (12.0, 9.0)
F1_SIZE = (9.0, 6.0)
#: Above this many classes the per-class curves are drawn thin and grey, without a legend entry each.
LEGEND_CLASSES = 12
#: Above this many rows the confusion matrix's cells carry no numbers (too small to read).
ANNOTATED_CELLS = 30
SIZE_BUCKETS = ("all", "small", "medium", "large")


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_curve(ax: Any, x: Sequence[float], y: Sequence[float | None], **style: Any) -> Any:
    """``ax.plot`` of ``y`` against ``x`` (``None`` as a gap); a curve with a single point is drawn as a point,
    which a line alone would leave invisible."""
    values = [math.nan if v is None else v for v in y]
    if sum(1 for v in values if math.isfinite(v)) < 2:
        style.setdefault("marker", "o")
    return ax.plot(list(x), values, **style)[0]


def _ap(curve: Sequence[float]) -> float:
    """A curve's area as COCO's AP: the mean of its 101 values, 0-100."""
    return 100 * sum(curve) / len(curve)


def pr_figure(curves: dict[str, Any]):
    """The 2 x 2 precision-recall panels (see the module's table); each line's label ends in its AP."""
    figure = _figure(PR_SIZE)
    axes = figure.subplots(2, 2)
    recall = curves["recall"]
    many = len(curves["classes"]) > LEGEND_CLASSES
    for row, (key, what) in enumerate((("iou50", "IoU 0.5"), ("iou50_95", "IoU 0.5:0.95"))):
        by_class, by_size = axes[row]
        table = curves["pr"][key]
        for name in curves["classes"]:
            curve = table["all"].get(name)
            if curve is None:
                continue  # no objects of this class
            style = {"color": "0.7", "lw": 0.6} if many else {"lw": 1.2, "label": f"{name} {_ap(curve):.1f}"}
            plot_curve(by_class, recall, curve, **style)
        mean = table["all"]["mean"]
        if mean is not None:
            plot_curve(by_class, recall, mean, color="black", lw=2.5, label=f"all classes {_ap(mean):.1f}")
        for bucket in SIZE_BUCKETS:
            curve = table[bucket]["mean"]
            if curve is not None:
                width = 2.5 if bucket == "all" else 1.5
                plot_curve(by_size, recall, curve, lw=width, label=f"{bucket} {_ap(curve):.1f}")
        more = f" ({len(curves['classes'])} classes in grey)" if many else ""
        by_class.set_title(f"per class, {what}{more}: legend = AP")
        by_size.set_title(f"per object size, all classes, {what}: legend = AP")
        for ax in (by_class, by_size):
            ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="lower left")
    return figure


def f1_figure(curves: dict[str, Any]):
    """F1 against the score threshold (IoU 0.5), per class and their mean, the best threshold marked."""
    figure = _figure(F1_SIZE)
    ax = figure.subplots()
    f1 = curves["f1"]
    thresholds = f1["thresholds"]
    many = len(f1["per_class"]) > LEGEND_CLASSES
    for name, row in f1["per_class"].items():
        style = {"color": "0.7", "lw": 0.6} if many else {"lw": 1.0, "label": name}
        plot_curve(ax, thresholds, row["f1"], **style)
    best = f1["best_score_threshold"]
    if f1["mean"] is not None:
        plot_curve(ax, thresholds, f1["mean"]["f1"], color="black", lw=2.5, label="mean F1")
        plot_curve(ax, thresholds, f1["mean"]["precision"], color="tab:blue", lw=1.2, ls="--", label="mean precision")
        plot_curve(ax, thresholds, f1["mean"]["recall"], color="tab:red", lw=1.2, ls="--", label="mean recall")
    if best is not None:
        point = f1["best"]
        ax.axvline(best, color="black", lw=0.8, ls=":")
        ax.plot([best], [point["f1"]], "o", color="black")
        title = f"best F1 {point['f1']:.2f} at score {best:.2f} (fpn detect --score-thresh {best:.2f})"
    else:
        title = "no objects: no F1" if f1["mean"] is None else "F1 is 0 at every threshold"
    ax.set_title(f"F1 against score threshold, IoU {f1['iou']:g}: {title}")
    ax.set(xlabel="score threshold", ylabel="F1 / precision / recall", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
    return figure


def confusion_side(classes: int) -> float:
    """The confusion matrix figure's side in inches for ``classes`` classes (plus background)."""
    return max(6.0, 3.0 + 0.5 * (classes + 1))


def confusion_figure(curves: dict[str, Any]):
    """The confusion matrix: counts in the cells, colour = the share of the row (of that class's objects)."""
    import numpy as np

    confusion = curves["confusion"]
    labels, matrix = confusion["labels"], np.asarray(confusion["matrix"], dtype=float)
    side = confusion_side(len(labels) - 1)
    figure = _figure((side, side))
    ax = figure.subplots()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the row")
    n = len(labels)
    if n <= ANNOTATED_CELLS:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    ticks = list(range(n)) if n <= ANNOTATED_CELLS * 2 else []
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90 if n > 8 else 45, ha="right" if n <= 8 else "center")
    ax.set_yticks(ticks, [labels[i] for i in ticks])
    ax.set(xlabel="predicted (background: object missed)", ylabel="true (background: false detection)")
    ax.set_title(f"confusion matrix (score >= {confusion['score']:g}, IoU > {confusion['iou']:g})")
    return figure


def write_eval_plots(curves: dict[str, Any] | None, out_dir: str | os.PathLike, dataset: Any = None) -> list[Path]:
    """Write the plots of the module's table into ``out_dir``; the val grid only with the ``dataset`` (a
    :class:`~fpn.data.DetectionDataset`) the curves were computed on. Returns the paths written; nothing
    for ``curves`` of ``None`` (a split without objects)."""
    if curves is None:
        return []
    out = Path(out_dir)
    written = [
        save_picture(pr_figure(curves), out / PR_FILE, dpi=DPI),
        save_picture(f1_figure(curves), out / F1_FILE, dpi=DPI),
        save_picture(confusion_figure(curves), out / CONFUSION_FILE, dpi=DPI),
    ]
    if dataset is not None:
        from fpn.viz.val_grid import val_grid

        examples = curves["examples"]
        grid = val_grid(dataset, examples["image_ids"], examples["detections"], curves["best_score_threshold"])
        if grid is not None:
            written.append(save_picture(grid, out / GRID_FILE))
    return written
