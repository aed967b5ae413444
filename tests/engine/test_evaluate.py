"""Evaluation: agreement with pycocotools, perfect and empty detections, the per-level table, class mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scripted import Scripted, noisy_outputs, output, perfect_outputs, pycocotools_stats
from torch import nn

from fpn.config import ModelConfig
from fpn.data import load_dataset, make_synthetic
from fpn.data.large_scenes import LargeScenesConfig, make_large_scenes
from fpn.engine.evaluate import METRICS, coco_metrics, evaluate, format_metrics, format_per_level, per_level_table
from fpn.engine.tiling import TileOptions, tile_grid
from fpn.errors import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    path = make_synthetic(tmp_path_factory.mktemp("eval") / "set", num_train=1, num_val=6, image_size=160)
    return load_dataset(path, "val")


def test_metrics_agree_with_pycocotools(dataset) -> None:
    result = evaluate(Scripted(dataset.names, noisy_outputs(dataset)), dataset, batch_size=4)
    detections = result["detections"]
    assert detections and {"image_id", "category_id", "bbox", "score", "level"} <= set(detections[0])

    for name, value in zip(METRICS, pycocotools_stats(dataset.coco_ground_truth(), detections)):
        expected = None if value < 0 else value * 100
        assert result["metrics"][name] == pytest.approx(expected, abs=1e-3), name
    assert 0 < result["metrics"]["AP"] < 100


def test_perfect_detections_score_100_even_with_another_label_order(dataset) -> None:
    result = evaluate(Scripted(dataset.names, perfect_outputs(dataset)), dataset)
    assert result["metrics"]["AP"] == pytest.approx(100.0)
    assert result["metrics"]["AP50"] == pytest.approx(100.0)
    # A model whose classes are listed in reverse order: labels are mapped to the dataset's ids by name.
    k = dataset.num_classes
    reversed_model = Scripted(dataset.names[::-1], perfect_outputs(dataset, lambda label: k + 1 - label))
    assert evaluate(reversed_model, dataset)["metrics"]["AP"] == pytest.approx(100.0)


def test_empty_detections_give_zero_without_crashing(dataset) -> None:
    empty = [output(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)) for _ in range(len(dataset))]
    result = evaluate(Scripted(dataset.names, empty), dataset)
    assert result["detections"] == [] and result["per_level"] == {}
    assert result["metrics"]["AP"] == 0.0 and result["metrics"]["AR100"] == 0.0
    assert all(v in (0.0, None) for v in result["metrics"].values())
    assert "AP" in format_metrics(result["metrics"]) and "no detections" in format_per_level(result["per_level"])


def test_per_level_table_counts_every_detection_once(dataset) -> None:
    result = evaluate(Scripted(dataset.names, noisy_outputs(dataset, seed=1)), dataset)
    table = result["per_level"]
    assert sum(row["total"] for row in table.values()) == len(result["detections"])
    for row in table.values():
        assert row["small"] + row["medium"] + row["large"] == row["total"]
    # the levels' own names, as in fpn.levels and fpn detect's JSON, in the detections and the table alike
    assert set(table) <= {"p2", "p3", "p4", "p5"}
    assert {d["level"] for d in result["detections"]} == set(table)
    hand = [
        {"bbox": [0, 0, 10, 10], "level": "p2"},  # small
        {"bbox": [0, 0, 40, 40], "level": "p2"},  # medium
        {"bbox": [0, 0, 100, 100], "level": "p10"},  # large; sorted as a number, after p5
        {"bbox": [0, 0, 100, 100], "level": "p5"},  # large
        {"bbox": [0, 0, 32, 32], "level": "p3"},  # exactly 32²: medium, as COCO's bucket edges
        {"bbox": [0, 0, 5, 5], "level": None},  # a model that does not say: listed last
    ]
    assert per_level_table(hand) == {
        "p2": {"small": 1, "medium": 1, "large": 0, "total": 2},
        "p3": {"small": 0, "medium": 1, "large": 0, "total": 1},
        "p5": {"small": 0, "medium": 0, "large": 1, "total": 1},
        "p10": {"small": 0, "medium": 0, "large": 1, "total": 1},
        "?": {"small": 1, "medium": 0, "large": 0, "total": 1},
    }
    assert list(per_level_table(hand)) == ["p2", "p3", "p5", "p10", "?"]
    assert format_per_level(per_level_table(hand)).splitlines()[1].split()[0] == "p2"


def test_dataset_classes_the_model_lacks_are_named_in_a_warning(dataset, caplog) -> None:
    # A model of two of the dataset's classes (and one it does not have): the other classes can only score 0.
    kept = list(dataset.names[:2])
    names = [kept[1], "zebra", kept[0]]
    to_model = {i + 1: names.index(name) + 1 for i, name in enumerate(dataset.names) if name in kept}
    outputs = perfect_outputs(dataset, lambda label: to_model.get(label, 2))  # label 2 (zebra) is dropped
    with caplog.at_level("WARNING", logger="fpn.engine.evaluate"):
        result = evaluate(Scripted(names, outputs), dataset)
    missing = list(dataset.names[2:])
    assert result["classes_not_in_model"] == missing
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"{len(missing)} of the dataset's {len(dataset.names)} classes" in warning
    assert all(name in warning for name in missing) and "\n" not in warning
    # matched by name: the two known classes are perfect, the rest pull the average down
    assert 0 < result["metrics"]["AP"] < 100
    assert {d["category_id"] for d in result["detections"]} <= {
        dataset.category_ids[dataset.names.index(name)] for name in kept
    }
    caplog.clear()
    with caplog.at_level("WARNING", logger="fpn.engine.evaluate"):
        assert evaluate(Scripted(dataset.names, perfect_outputs(dataset)), dataset)["classes_not_in_model"] == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_model_of_other_classes_is_refused(dataset) -> None:
    with pytest.raises(ConfigError, match="none of the model's classes"):
        evaluate(Scripted(["cat", "dog"], []), dataset)


def test_images_without_objects_are_fine(tmp_path: Path) -> None:
    # A ground truth with no objects at all: nothing to find, every metric undefined (None), no crash.
    path = make_synthetic(tmp_path / "set", num_train=1, num_val=2, image_size=96, min_objects=0, max_objects=0)
    dataset = load_dataset(path, "val")
    boxes = torch.tensor([[1.0, 1.0, 20.0, 20.0]])
    outputs = [output(boxes, torch.ones(1), torch.ones(1)) for _ in range(len(dataset))]
    result = evaluate(Scripted(dataset.names, outputs), dataset)
    assert all(v is None for v in result["metrics"].values())
    assert len(result["detections"]) == 2


def test_a_raised_detection_cap_reads_as_summarize_where_it_does_not_bind(dataset) -> None:
    detections = evaluate(Scripted(dataset.names, noisy_outputs(dataset)), dataset)["detections"]
    ground_truth = dataset.coco_ground_truth()
    assert coco_metrics(ground_truth, detections, max_detections=1000) == coco_metrics(ground_truth, detections)


class TileOracle(nn.Module):
    """Sees the ground truth through each tile, in tile coordinates: objects whole in the tile at score 1,
    the pieces of those its borders cut at 0.5. Tiles arrive in :func:`tile_grid` order, image by image."""

    def __init__(self, class_names, targets, sizes, size, overlap):
        super().__init__()
        self.config = ModelConfig(class_names=list(class_names))
        self.queue = [(t, tile) for t, (h, w) in zip(targets, sizes) for tile in tile_grid(h, w, size, overlap)]

    def forward(self, crops):
        outs = []
        for _ in crops:
            target, tile = self.queue.pop(0)
            offset = tile[:2].float().repeat(2)
            boxes = target["boxes"] - offset
            clipped = torch.minimum(boxes.clamp(min=0), (tile[2:] - tile[:2]).float().repeat(2))
            seen = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
            whole = (clipped == boxes).all(dim=1)
            outs.append(output(clipped[seen], torch.where(whole, 1.0, 0.5)[seen], target["labels"][seen]))
        return outs


def test_tiled_evaluation_scores_a_perfect_tile_detector_100_in_image_coordinates(tmp_path) -> None:
    config = LargeScenesConfig(num_train=1, num_val=2, train_side=128, min_side=300, max_side=420, cell=48)
    large = load_dataset(make_large_scenes(tmp_path / "large", config), "val")
    targets = [large.target(i) for i in range(len(large))]
    sizes = [(im["height"], im["width"]) for im in large.coco_ground_truth()["images"]]
    # The shared strip (0.25 x 160 = 40 px) holds the largest object: each is whole in some tile.
    oracle = TileOracle(large.names, targets, sizes, 160, 0.25)
    result = evaluate(oracle, large, tiling=TileOptions(160, 0.25, batch=3))
    assert not oracle.queue  # every tile was run
    assert result["metrics"]["AP"] == pytest.approx(100.0)
    assert all(len(d["tile"]) == 4 for d in result["detections"])
    assert len(result["detections"]) == sum(len(t["boxes"]) for t in targets)  # pieces merged away
