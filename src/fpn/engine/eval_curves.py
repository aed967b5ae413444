"""The numbers behind the plots people read after an evaluation: PR curves, F1 against score, confusion matrix.

Everything here is numbers (no pictures: :mod:`fpn.viz.eval_plots` draws them), in one JSON-ready dict that
``fpn eval`` and ``fpn train`` write as ``curves.json`` beside ``metrics.json``, so a plot can be drawn again
from a saved file:

* ``pr``: precision at COCO's 101 recall points (0, 0.01, ..., 1), read from pycocotools' own
  ``COCOeval.eval["precision"]`` (interpolated: the best precision at that recall or above), per class and
  for the mean over classes, per size bucket (all / small / medium / large), at IoU 0.5 and averaged over
  IoU 0.5:0.95. The mean of a curve's 101 values is pycocotools' AP for it, so a curve's area is the AP the
  metrics report (AP, AP50, APs, ... for the mean curves).
* ``f1``: precision, recall and F1 at each score threshold 0.00, 0.01, ..., 1.00, at IoU 0.5, from
  COCOeval's own per-detection matches (``evalImgs``: greedy by score, one detection per object, per class,
  crowd / difficult objects ignored, at most COCO's per-image cap of detections). F1 is computed per class
  and averaged over the classes that have objects (as AP is); ``best_score_threshold`` is where that mean
  F1 is highest (the highest threshold among equal F1s: fewer detections for the same F1), ``None`` when
  no detection is right at any threshold (F1 0 everywhere).
* ``confusion``: a detection-to-object confusion matrix in Ultralytics' sense (``ConfusionMatrix`` of
  ``ultralytics/utils/metrics.py``), see :func:`confusion_matrix`.
* ``examples``: the first images' detections, for the ground-truth-beside-prediction grid.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpn.errors import DataError
from fpn.io import atomic_write_text
from fpn.ops import box_iou

#: The curves' file, beside metrics.json.
CURVES_FILE = "curves.json"

#: IoU of the F1 curve's matches (COCO's AP50 matching).
F1_IOU = 0.5
#: The F1 curve's score thresholds: 0.00 to 1.00 in steps of 0.01.
THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)
#: The confusion matrix's thresholds, Ultralytics' defaults: a detection counts from this score on, and
#: pairs with an object when their IoU is above this (whatever the two classes).
CONFUSION_SCORE = 0.25
CONFUSION_IOU = 0.45
#: How many val images (the first ones) the grid of ground truth beside predictions shows.
EXAMPLE_IMAGES = 8
#: COCOeval's area ranges, in the order of its ``areaRng`` (index ``a`` of ``eval["precision"]``).
AREAS = ("all", "small", "medium", "large")
BACKGROUND = "background"


def curves(evaluator: Any, ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The plots' numbers (see the module's docstring) from an evaluated and accumulated ``COCOeval``.

    ``ground_truth`` is the COCO dict it scored (class names from its categories), ``detections`` the results
    it scored (``level`` kept).
    """
    by_id = {c["id"]: c.get("name", str(c["id"])) for c in ground_truth["categories"]}
    f1 = f1_curve(evaluator, by_id)
    first = [image["id"] for image in ground_truth["images"][:EXAMPLE_IMAGES]]
    wanted = set(first)
    return {
        "classes": list(by_id.values()),
        "recall": [round(float(r), 2) for r in evaluator.params.recThrs],
        "pr": pr_curves(evaluator, by_id),
        "f1": f1,
        "best_score_threshold": f1["best_score_threshold"],
        "confusion": confusion_matrix(ground_truth, detections),
        "examples": {"image_ids": first, "detections": [d for d in detections if d["image_id"] in wanted]},
    }


def save_curves(curves: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write ``curves`` to ``folder/curves.json`` atomically (compact: it holds thousands of numbers)."""
    return atomic_write_text(json.dumps(curves, separators=(",", ":")) + "\n", Path(folder) / CURVES_FILE)


def load_curves(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``folder/curves.json`` as :func:`curves` made it, or ``None`` if there is none."""
    path = Path(folder) / CURVES_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the evaluation's curves ({error})") from None


def best_threshold_beside(weights: str | os.PathLike) -> tuple[float, Path] | None:
    """The ``best_score_threshold`` of the ``metrics.json`` in the weights' folder, and that file's path.

    ``fpn train`` writes one beside its ``model.pt`` (the final val evaluation), and ``fpn eval --output
    RUN/metrics.json`` another; ``None`` when there is none, it has no threshold, or it cannot be read (a hint
    is no reason to fail).
    """
    path = Path(weights).parent / "metrics.json"
    try:
        best = json.loads(path.read_text()).get("best_score_threshold")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(best, bool) or not isinstance(best, (int, float)):
        return None
    return float(best), path


def _mean_curve(precision: np.ndarray) -> list[float] | None:
    """The mean over the last axis of ``precision [R, N]``, counting only columns without -1 (no objects)."""
    valid = precision[:, (precision > -1).all(axis=0)]
    if valid.shape[1] == 0:
        return None
    return [round(float(v), 6) for v in valid.mean(axis=1)]


def pr_curves(evaluator: Any, names: dict[int, str]) -> dict[str, Any]:
    """``{"iou50": {area: {"mean": [...], class name: [...]}}, "iou50_95": {...}}`` of precision at the
    101 recall points; ``None`` for a class or bucket without objects (pycocotools' ``-1``).

    ``names``: category id -> class name (COCOeval orders its classes by sorted category id).
    """
    precision = evaluator.eval["precision"][..., -1]  # [T, R, K, A] at the largest maxDets cap
    result: dict[str, Any] = {}
    for key, block in (("iou50", precision[:1]), ("iou50_95", precision)):
        by_area = {}
        for a, area in enumerate(AREAS):
            # [T, R, K]: a class is -1 at every IoU or at none, so averaging over IoUs first is safe.
            curves_k = block[:, :, :, a]
            per_class = np.where((curves_k > -1).all(axis=0), curves_k.mean(axis=0), -1.0)  # [R, K]
            row: dict[str, list[float] | None] = {"mean": _mean_curve(per_class)}
            for k, category in enumerate(evaluator.params.catIds):
                row[names.get(category, str(category))] = _mean_curve(per_class[:, k : k + 1])
            by_area[area] = row
        result[key] = by_area
    return result


def area(curve: Sequence[float] | None) -> float | None:
    """A PR curve's area as COCO defines AP: the mean of precision at the 101 recall points (0-100)."""
    return None if curve is None else round(100 * float(np.mean(curve)), 4)


def f1_curve(evaluator: Any, names: dict[int, str]) -> dict[str, Any]:
    """Precision, recall and F1 per score threshold at IoU 0.5 (see the module's docstring), per class name
    (``names``: category id -> name) and averaged over the classes with objects.

    Reads ``evaluator.evalImgs`` at area "all": per class, each detection's score and whether it matched an
    object at IoU 0.5 (``dtMatches[0] > 0``), or is ignored (matched a crowd / difficult object).
    """
    params = evaluator.params
    t = int(np.argmin(np.abs(np.asarray(params.iouThrs) - F1_IOU)))
    n_images = len(params.imgIds)
    n_areas = len(params.areaRng)
    per_class: dict[str, dict[str, list[float | None]]] = {}
    f1s, precisions, recalls = [], [], []
    for k, category in enumerate(params.catIds):
        entries = [e for e in evaluator.evalImgs[k * n_areas * n_images : k * n_areas * n_images + n_images] if e]
        objects = sum(int((np.asarray(e["gtIgnore"]) == 0).sum()) for e in entries)
        if objects == 0:
            continue  # no F1 without objects: left out of the mean, as AP leaves such a class out
        scores, matched = _scored_matches(entries, t)
        # Detections at or above each threshold: counts from the sorted scores, one searchsorted per curve.
        order = np.argsort(-scores, kind="stable")
        scores, matched = scores[order], matched[order]
        kept = np.searchsorted(-scores, -THRESHOLDS, side="right")  # detections with score >= threshold
        tp = np.concatenate([[0], np.cumsum(matched)])[kept]
        fp = kept - tp
        f1 = 2 * tp / (tp + fp + objects)  # 2TP / (2TP + FP + FN), defined whenever there are objects
        precision = np.where(kept > 0, tp / np.maximum(kept, 1), np.nan)
        recall = tp / objects
        name = names.get(category, str(category))
        per_class[name] = {"f1": _rounded(f1), "precision": _rounded(precision), "recall": _rounded(recall)}
        f1s.append(f1)
        precisions.append(precision)
        recalls.append(recall)
    if not f1s:
        return {"iou": F1_IOU, "thresholds": THRESHOLDS.tolist(), "per_class": {}, "mean": None,
                "best_score_threshold": None, "best": None}  # fmt: skip
    mean_f1 = np.mean(f1s, axis=0)
    useful = bool(mean_f1.max() > 0)  # no detection right at any threshold: no threshold to suggest
    with warnings.catch_warnings():  # a threshold above every class's detections has no precision: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_precision = np.nanmean(np.array(precisions), axis=0)
    best = len(THRESHOLDS) - 1 - int(np.argmax(mean_f1[::-1]))  # the highest threshold among equal F1s
    mean = {"f1": _rounded(mean_f1), "precision": _rounded(mean_precision)}
    mean["recall"] = _rounded(np.mean(recalls, axis=0))
    point = {key: mean[key][best] for key in ("f1", "precision", "recall")}
    return {
        "iou": F1_IOU,
        "thresholds": THRESHOLDS.tolist(),
        "per_class": per_class,
        "mean": mean,
        "best_score_threshold": float(THRESHOLDS[best]) if useful else None,
        "best": point if useful else None,
    }


def _scored_matches(entries: Sequence[dict[str, Any]], t: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and matched flags (at IoU index ``t``) of one class's detections, ignored ones left out."""
    scores, matched = [], []
    for entry in entries:
        if not entry["dtIds"]:
            continue
        ignored = np.asarray(entry["dtIgnore"])[t].astype(bool)
        scores.append(np.asarray(entry["dtScores"], dtype=np.float64)[~ignored])
        matched.append(np.asarray(entry["dtMatches"])[t][~ignored] > 0)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(matched)


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in values]


def confusion_matrix(
    ground_truth: dict[str, Any],
    detections: Sequence[dict[str, Any]],
    *,
    score: float = CONFUSION_SCORE,
    iou: float = CONFUSION_IOU,
) -> dict[str, Any]:
    """Objects against detections, Ultralytics' way: ``matrix[true][predicted]`` over classes + background.

    Detections with ``score`` >= 0.25 (Ultralytics: conf 0.25) are paired one to one with objects whose IoU
    with them is above ``iou`` = 0.45 (Ultralytics' iou_thres), whatever the classes, highest IoU first.
    A paired object counts in its row at the detection's class (the diagonal when the class is right); an
    object no detection pairs with counts in the background *column* (missed); a detection paired with no
    object in the background *row* (a false positive), unless it lies on a crowd / difficult region (more
    than ``iou`` of its area inside one: COCO's rule for those), which neither counts nor is counted. So
    each class row sums to that class's number of (non-crowd) objects.

    Rows are the true classes, then background; columns the predicted classes, then background (Ultralytics
    draws the transpose: predicted rows, true columns).
    """
    categories = [c["id"] for c in ground_truth["categories"]]
    index = {cid: i for i, cid in enumerate(categories)}
    k = len(categories)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    objects: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in ground_truth["annotations"]:
        objects[annotation["image_id"]].append(annotation)
    found: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for detection in detections:
        if detection["score"] >= score and detection["category_id"] in index:
            found[detection["image_id"]].append(detection)
    for image in ground_truth["images"]:
        annotations, dets = objects.get(image["id"], []), found.get(image["id"], [])
        real = [a for a in annotations if not a.get("iscrowd")]
        crowd = [a for a in annotations if a.get("iscrowd")]
        gt_boxes, dt_boxes = _xyxy([a["bbox"] for a in real]), _xyxy([d["bbox"] for d in dets])
        pairs = _pair(box_iou(gt_boxes, dt_boxes), iou) if real and dets else []
        paired_gt, paired_dt = {g for g, _ in pairs}, {d for _, d in pairs}
        for g, d in pairs:
            matrix[index[real[g]["category_id"]], index[dets[d]["category_id"]]] += 1
        for g, annotation in enumerate(real):
            if g not in paired_gt:
                matrix[index[annotation["category_id"]], k] += 1
        on_crowd = _inside(dt_boxes, _xyxy([a["bbox"] for a in crowd]), iou) if crowd and dets else set()
        for d, detection in enumerate(dets):
            if d not in paired_dt and d not in on_crowd:
                matrix[k, index[detection["category_id"]]] += 1
    names = [c.get("name", str(c["id"])) for c in ground_truth["categories"]]
    return {"labels": [*names, BACKGROUND], "matrix": matrix.tolist(), "score": score, "iou": iou}


def _xyxy(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    xywh = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)


def _pair(ious: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (object, detection) pairs with IoU above ``threshold``, the highest IoU paired first."""
    rows, cols = torch.nonzero(ious > threshold, as_tuple=True)
    order = torch.argsort(ious[rows, cols], descending=True, stable=True)
    pairs, used_gt, used_dt = [], set(), set()
    for g, d in zip(rows[order].tolist(), cols[order].tolist()):
        if g not in used_gt and d not in used_dt:
            pairs.append((g, d))
            used_gt.add(g)
            used_dt.add(d)
    return pairs


def _inside(detections: torch.Tensor, regions: torch.Tensor, threshold: float) -> set[int]:
    """Detections with more than ``threshold`` of their area inside one of ``regions`` (xyxy)."""
    lt = torch.maximum(detections[:, None, :2], regions[None, :, :2])
    rb = torch.minimum(detections[:, None, 2:], regions[None, :, 2:])
    overlap = (rb - lt).clamp(min=0).prod(dim=2)
    own = (detections[:, 2:] - detections[:, :2]).prod(dim=1).clamp(min=1e-9)
    return set(torch.nonzero((overlap / own[:, None] > threshold).any(dim=1)).flatten().tolist())
