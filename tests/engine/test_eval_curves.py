"""The plots' numbers: PR areas are pycocotools' APs, confusion rows count the objects, F1 at each threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scripted import Scripted, noisy_outputs, perfect_outputs, pycocotools_stats

from fpn.data import load_dataset, make_synthetic
from fpn.engine.eval_curves import THRESHOLDS, area, best_threshold_beside, confusion_matrix
from fpn.engine.evaluate import evaluate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    path = make_synthetic(tmp_path_factory.mktemp("curves") / "set", num_train=1, num_val=8, image_size=160)
    return load_dataset(path, "val")


@pytest.fixture(scope="module")
def result(dataset):
    return evaluate(Scripted(dataset.names, noisy_outputs(dataset, seed=3)), dataset, batch_size=4)


def reference_stats(dataset, detections, cat_ids=None) -> np.ndarray:
    return pycocotools_stats(dataset.coco_ground_truth(), detections, cat_ids)


def test_pr_curve_areas_are_pycocotools_aps(dataset, result) -> None:
    curves = result["curves"]
    stats = reference_stats(dataset, result["detections"])
    pr = curves["pr"]
    assert curves["recall"] == [round(r, 2) for r in np.linspace(0, 1, 101)]
    assert area(pr["iou50_95"]["all"]["mean"]) == pytest.approx(100 * stats[0], abs=0.1)
    assert area(pr["iou50"]["all"]["mean"]) == pytest.approx(100 * stats[1], abs=0.1)
    for a, bucket in ((3, "small"), (4, "medium"), (5, "large")):
        if stats[a] >= 0:
            assert area(pr["iou50_95"][bucket]["mean"]) == pytest.approx(100 * stats[a], abs=0.1), bucket
        else:
            assert pr["iou50_95"][bucket]["mean"] is None
    # Per class: pycocotools run on that category alone.
    checked = 0
    for name, category in zip(dataset.names, dataset.category_ids):
        alone = reference_stats(dataset, result["detections"], [category])
        if alone[0] < 0:
            assert pr["iou50"]["all"][name] is None
            continue
        assert area(pr["iou50"]["all"][name]) == pytest.approx(100 * alone[1], abs=0.1), name
        assert area(pr["iou50_95"]["all"][name]) == pytest.approx(100 * alone[0], abs=0.1), name
        checked += 1
    assert checked >= 3
    assert 0 < result["metrics"]["AP"] < 100  # a curve neither empty nor perfect


def test_confusion_rows_count_the_objects(dataset, result) -> None:
    confusion = result["curves"]["confusion"]
    matrix = np.array(confusion["matrix"])
    k = dataset.num_classes
    assert matrix.shape == (k + 1, k + 1) and confusion["labels"] == [*dataset.names, "background"]
    truth = dataset.coco_ground_truth()
    for i, category in enumerate(dataset.category_ids):
        objects = sum(1 for a in truth["annotations"] if a["category_id"] == category and not a["iscrowd"])
        assert matrix[i].sum() == objects, dataset.names[i]
    kept = sum(1 for d in result["detections"] if d["score"] >= confusion["score"])
    assert matrix[:, :k].sum() == kept  # every detection at or above the score is in exactly one column
    assert matrix[k, k] == 0
    assert np.trace(matrix[:k, :k]) > 0 and matrix[k, :k].sum() > 0 and matrix[:k, k].sum() > 0


def test_confusion_pairs_one_to_one_across_classes() -> None:
    truth = {
        "images": [{"id": 1}],
        "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [50, 50, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [100, 100, 40, 40], "iscrowd": 1},
        ],
    }
    detections = [
        {"image_id": 1, "category_id": 9, "bbox": [0, 0, 10, 10], "score": 0.9},  # a taken for b
        {"image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10], "score": 0.8},  # a second box on a: false
        {"image_id": 1, "category_id": 9, "bbox": [110, 110, 10, 10], "score": 0.9},  # on the crowd region
        {"image_id": 1, "category_id": 7, "bbox": [50, 50, 10, 10], "score": 0.2},  # under the score
    ]
    matrix = np.array(confusion_matrix(truth, detections)["matrix"])
    assert matrix.tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]


def test_f1_curve_counts_matches_at_each_threshold(dataset) -> None:
    # Perfect boxes with random scores: at threshold t a class's recall is the share of its objects scored
    # >= t, there are no false detections (precision 1), so F1 = 2r / (1 + r).
    outputs = perfect_outputs(dataset)
    g = torch.Generator().manual_seed(0)
    for out in outputs:
        out["scores"] = torch.rand(len(out["scores"]), generator=g) * 0.9 + 0.05
    result = evaluate(Scripted(dataset.names, outputs), dataset)
    f1 = result["curves"]["f1"]
    assert f1["thresholds"] == THRESHOLDS.tolist()
    for name, category in zip(dataset.names, dataset.category_ids):
        scores = [d["score"] for d in result["detections"] if d["category_id"] == category]
        row = f1["per_class"][name]
        expected = np.array([sum(s >= t for s in scores) / len(scores) for t in THRESHOLDS])
        assert np.array(row["recall"]) == pytest.approx(expected, abs=1e-6), name
        assert np.array(row["f1"]) == pytest.approx(2 * expected / (1 + expected), abs=1e-5), name
        assert all(p in (1.0, None) for p in row["precision"])
    mean = np.mean([row["f1"] for row in f1["per_class"].values()], axis=0)
    assert np.array(f1["mean"]["f1"]) == pytest.approx(mean, abs=1e-6)
    # Every detection is right, so F1 is 1 up to the lowest score: the best is the highest such threshold.
    lowest = min(d["score"] for d in result["detections"])
    assert result["best_score_threshold"] == max(t for t in THRESHOLDS.tolist() if t <= lowest)
    assert f1["best"]["f1"] == pytest.approx(1.0)


def test_best_threshold_is_read_from_metrics_beside_the_weights(tmp_path) -> None:
    weights = tmp_path / "model.pt"
    assert best_threshold_beside(weights) is None
    (tmp_path / "metrics.json").write_text('{"best_score_threshold": 0.37}')
    assert best_threshold_beside(weights) == (0.37, tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_text("not json")
    assert best_threshold_beside(weights) is None


def test_no_objects_no_curves(dataset) -> None:
    empty = dataset.subset([])
    result = evaluate(Scripted(dataset.names, []), empty)
    assert result["curves"] is None and result["best_score_threshold"] is None
