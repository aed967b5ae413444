"""COCO-style evaluation of a detector on a dataset split, with a per-pyramid-level breakdown.

:func:`evaluate` runs the model over the dataset, converts its detections to COCO's results format in the
dataset's original category ids, and scores them with pycocotools against
:meth:`~fpn.data.DetectionDataset.coco_ground_truth` (built in memory, no files). Metrics are on a 0-100
scale; a metric whose area bucket has no ground truth at all (pycocotools' ``-1``) is ``None``.

The per-level table says which pyramid level produced how many detections, split by the detection's size
in COCO's buckets (small < 32², medium, large > 96² pixels of box area in the original image): the FPN
paper's claim is that small objects come from fine levels and large ones from coarse levels. Levels are
named as everywhere else (``"p3"``, as in :mod:`fpn.levels` and ``fpn detect``'s JSON), in the
detections' ``level`` and in the table's keys alike.

Model classes are matched to the dataset's by name. A dataset class the model does not have cannot be
detected, and COCO's AP averages it in as 0: :func:`evaluate` says so in a warning and lists those
classes under ``classes_not_in_model``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fpn.data.dataset import DetectionDataset, collate
from fpn.detection.classes import is_placeholder, real_classes
from fpn.engine.eval_curves import curves
from fpn.engine.tiling import FULL_IMAGE, TileOptions, detect_tiled
from fpn.errors import ConfigError

logger = logging.getLogger(__name__)

#: COCOeval.stats in order, under the names the metrics dict uses.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SMALL_AREA = 32.0**2
LARGE_AREA = 96.0**2
BUCKETS = ("small", "medium", "large")
#: COCO's per-image cap on detections (``maxDets``) for tiled evaluation: a large scene holds hundreds of
#: objects, and 100 would cap recall below them; untiled evaluation keeps COCO's 100.
TILED_MAX_DETECTIONS = 1000


def label_to_category(model_names: Sequence[str], dataset: DetectionDataset) -> dict[int, int]:
    """Model label (1..K) -> dataset category id, matched by class name.

    Names rather than positions, so a model whose classes are a superset (torchvision's 91 COCO slots) or
    a reordering of the dataset's still scores correctly; labels the dataset lacks are dropped, and so are
    placeholder slots (``"N/A"``) whatever the dataset calls its classes: they are no class at all.
    """
    ids = dict(zip(dataset.names, dataset.category_ids))
    named = enumerate(model_names, start=1)
    mapping = {label: ids[name] for label, name in named if name in ids and not is_placeholder(name)}
    if not mapping:
        raise ConfigError(
            f"{dataset.source}: none of the model's classes ({', '.join(real_classes(model_names)[:5])}, ...) "
            f"is a class of the dataset ({', '.join(dataset.names[:5])}, ...)"
        )
    return mapping


def classes_not_in_model(model_names: Sequence[str], dataset: DetectionDataset) -> list[str]:
    """The dataset's classes that no model label maps to (by name): they can only score 0 AP."""
    known = set(model_names)
    return [name for name in dataset.names if name not in known]


def warn_missing_classes(missing: Sequence[str], dataset: DetectionDataset) -> None:
    """One warning line naming the dataset classes the model cannot predict (the first few, and how many)."""
    if not missing:
        return
    shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
    logger.warning(
        "%s: %d of the dataset's %d classes are not classes of the model (matched by name), so it cannot "
        "detect them and AP counts them as 0: %s",
        dataset.source,
        len(missing),
        len(dataset.names),
        shown,
    )


def level_name(index: int) -> str | None:
    """The level's own name (``3`` -> ``"p3"``); ``None`` for a model that does not say (index < 0)."""
    return f"p{index}" if index >= 0 else None


def size_bucket(area: float) -> str:
    return "small" if area < SMALL_AREA else "large" if area > LARGE_AREA else "medium"


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int = 0,
    tiling: TileOptions | None = None,
) -> list[dict[str, Any]]:
    """Detections for every image of ``dataset`` in COCO results format, with the pyramid ``level`` of each.

    ``bbox`` is ``[x, y, w, h]`` in the original image's pixels; ``category_id`` is the dataset's id.
    ``tiling``: each image is detected in tiles and merged (:func:`fpn.engine.tiling.detect_tiled`), and
    each detection records its ``tile`` (``[x0, y0, x1, y1]``, or ``"full"`` for the full-image pass).
    """
    mapping = label_to_category(model.config.class_names, dataset)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(dataset), desc="eval", unit="img", leave=False, disable=not progress, file=sys.stderr)
    try:
        for images, targets in loader:
            if tiling is None:
                outputs = model([image.to(device) for image in images])
            else:
                outputs = [detect_tiled(model, image.to(device), tiling) for image in images]
            for output, target in zip(outputs, targets):
                boxes = output["boxes"].float().cpu()
                scores = output["scores"].float().cpu().tolist()
                labels = output["labels"].cpu().tolist()
                levels = output.get("levels", torch.full((len(labels),), -1)).cpu().tolist()
                tiles = output["tiles"].tolist() if "tiles" in output else [None] * len(labels)
                xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
                for box, score, label, level, tile in zip(xywh, scores, labels, levels, tiles):
                    if label not in mapping:
                        continue
                    record = {
                        "image_id": int(target["image_id"]),
                        "category_id": mapping[label],
                        "bbox": [round(v, 3) for v in box],
                        "score": round(float(score), 5),
                        "level": level_name(int(level)),
                    }
                    if tile is not None:
                        record["tile"] = "full" if tile[0] == FULL_IMAGE else tile
                    results.append(record)
            bar.update(len(images))
    finally:
        bar.close()
        model.train(was_training)
    return results


def coco_metrics(
    ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], max_detections: int = 100
) -> dict[str, float | None]:
    """pycocotools' 12 bbox numbers (0-100; ``None`` where a bucket has no ground truth), its prints silenced.

    ``max_detections``: COCO's per-image cap (``maxDets[2]``, 100 by COCO's rules); with another cap the AP
    numbers and "AR100" are at that cap (AR1 and AR10 stay at 1 and 10).
    """
    return metrics_of(coco_evaluation(ground_truth, detections, max_detections))


def coco_evaluation(
    ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], max_detections: int = 100
) -> Any:
    """An evaluated and accumulated ``COCOeval`` of ``detections`` (prints silenced); ``None`` when the
    ground truth has no objects at all (COCOeval would report -1 everywhere)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    printed = io.StringIO()
    evaluator = None
    with contextlib.redirect_stdout(printed):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)  # COCO() and COCOeval add keys to what they are given
        gt.createIndex()
        if gt.getAnnIds():
            evaluator = COCOeval(gt, _results(gt, detections), iouType="bbox")
            evaluator.params.maxDets = [1, 10, max_detections]
            evaluator.evaluate()
            evaluator.accumulate()
    logger.debug("pycocotools:\n%s", printed.getvalue().rstrip())
    return evaluator


def metrics_of(evaluator: Any) -> dict[str, float | None]:
    """:data:`METRICS` of a :func:`coco_evaluation` (all ``None`` for ``None``: nothing to find)."""
    if evaluator is None:
        return dict.fromkeys(METRICS)
    if evaluator.params.maxDets[-1] == 100:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluator.summarize()
        logger.debug("pycocotools:\n%s", printed.getvalue().rstrip())
        stats = evaluator.stats
    else:  # summarize() reads its first number at a literal 100: read them all at the cap instead
        stats = _summary(evaluator.eval)
    return {name: (round(float(v) * 100, 4) if v >= 0 else None) for name, v in zip(METRICS, stats)}


def _summary(evaluation: dict[str, Any]) -> list[float]:
    """COCOeval.summarize's 12 numbers from ``evaluation`` (its ``eval``), at ``maxDets`` index 2 but AR1/AR10.

    ``precision [T, R, K, A, M]`` and ``recall [T, K, A, M]`` (IoU thresholds, recall points, classes, area
    ranges all/small/medium/large, caps); a mean over the entries above -1, or -1 if there are none.
    """
    import numpy as np

    precision, recall = evaluation["precision"], evaluation["recall"]

    def mean(values: Any) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    ap = [mean(precision[:, :, :, 0, 2]), mean(precision[0, :, :, 0, 2]), mean(precision[5, :, :, 0, 2])]
    ap += [mean(precision[:, :, :, area, 2]) for area in (1, 2, 3)]
    ar = [mean(recall[:, :, 0, cap]) for cap in (0, 1, 2)] + [mean(recall[:, :, area, 2]) for area in (1, 2, 3)]
    return ap + ar


def _results(gt: Any, detections: Sequence[dict[str, Any]]) -> Any:
    """A results COCO object; ``loadRes`` cannot take an empty list, so build that one by hand."""
    from pycocotools.coco import COCO

    plain = [{k: v for k, v in d.items() if k not in ("level", "tile")} for d in detections]
    if plain:
        return gt.loadRes(plain)
    empty = COCO()
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"])}
    empty.dataset["annotations"] = []
    empty.createIndex()
    return empty


def per_level_table(detections: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{"p2": {"small": n, "medium": n, "large": n, "total": n}, ...}`` by level, finest first (``"?"``:
    detections whose level is unknown, last)."""
    table: dict[str, dict[str, int]] = {}
    for det in detections:
        row = table.setdefault(det.get("level") or "?", {**dict.fromkeys(BUCKETS, 0), "total": 0})
        _, _, w, h = det["bbox"]
        row[size_bucket(w * h)] += 1
        row["total"] += 1
    order = sorted(table, key=lambda name: (name == "?", int(name[1:]) if name != "?" else 0))
    return {name: table[name] for name in order}


def evaluate(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int = 0,
    tiling: TileOptions | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` and score it.

    ``tiling``: detect each image in tiles, merged in its own coordinates (see :func:`predict`), scored with
    COCO's per-image cap raised to :data:`TILED_MAX_DETECTIONS`.

    Returns ``{"metrics": {AP, AP50, ..., ARl}, "best_score_threshold": t, "curves": {...}, "per_level": {...},
    "detections": [...], "images": N, "classes_not_in_model": [...]}``; see :func:`coco_metrics`,
    :func:`fpn.engine.eval_curves.curves` (the plots' numbers, and the score threshold of the best F1 at IoU
    0.5; both ``None`` when the split has no objects), :func:`per_level_table`, :func:`predict` and
    :func:`classes_not_in_model` (warned about, since AP averages them in as 0).
    """
    label_to_category(model.config.class_names, dataset)  # refuses a model with no class in common
    missing = classes_not_in_model(model.config.class_names, dataset)
    warn_missing_classes(missing, dataset)  # before the long part, so that it can be interrupted
    detections = predict(
        model, dataset, batch_size=batch_size, device=device, progress=progress, workers=workers, tiling=tiling
    )
    cap = 100 if tiling is None else TILED_MAX_DETECTIONS
    ground_truth = dataset.coco_ground_truth()
    evaluator = coco_evaluation(ground_truth, detections, max_detections=cap)
    plotted = None if evaluator is None else curves(evaluator, ground_truth, detections)
    return {
        "metrics": metrics_of(evaluator),
        "best_score_threshold": None if plotted is None else plotted["best_score_threshold"],
        "curves": plotted,
        "per_level": per_level_table(detections),
        "detections": detections,
        "images": len(dataset),
        "classes_not_in_model": missing,
    }


def format_metrics(metrics: dict[str, float | None]) -> str:
    """Two aligned lines: names, then values (``-`` where a bucket had no ground truth)."""
    cells = [(name, "-" if metrics.get(name) is None else f"{metrics[name]:.1f}") for name in METRICS]
    widths = [max(len(a), len(b)) for a, b in cells]
    head = "  ".join(name.rjust(w) for (name, _), w in zip(cells, widths))
    values = "  ".join(value.rjust(w) for (_, value), w in zip(cells, widths))
    return f"{head}\n{values}"


def format_per_level(table: dict[str, dict[str, int]]) -> str:
    """One line per level: detections by size bucket, and the level's share of all detections."""
    total = sum(row["total"] for row in table.values()) or 1
    lines = [f"{'level':>5}  {'small':>7}  {'medium':>7}  {'large':>7}  {'total':>7}  {'share':>6}"]
    for level, row in table.items():
        share = f"{100 * row['total'] / total:.1f}%"
        lines.append(
            f"{level:>5}  {row['small']:>7}  {row['medium']:>7}  {row['large']:>7}  {row['total']:>7}  {share:>6}"
        )
    if not table:
        lines.append("(no detections)")
    return "\n".join(lines)
