"""COCO reader: round trips, crowd handling, box cleaning, and a corpus of malformed inputs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader

from fpn.data import CocoDataset, collate, write_coco
from fpn.errors import DataError, FpnError

CATEGORIES = [{"id": 7, "name": "tree"}, {"id": 3, "name": "house"}]  # unsorted, non-contiguous ids


def _image(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _dataset(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Three images (one without objects) and a COCO file with a crowd annotation."""
    images = [
        {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 11, "file_name": "b.png", "width": 40, "height": 40},
        {"id": 12, "file_name": "empty.png", "width": 32, "height": 24},
    ]
    for entry in images:
        _image(tmp_path / "imgs" / entry["file_name"], entry["width"], entry["height"], entry["id"])
    annotations = [
        {"image_id": 10, "category_id": 7, "bbox": [1.5, 2.0, 10.0, 20.0]},
        {"image_id": 10, "category_id": 3, "bbox": [30, 10, 30, 30]},
        {"image_id": 11, "category_id": 3, "bbox": [0, 0, 40, 40], "area": 1000.0},
        {"image_id": 11, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 1},
    ]
    path = write_coco(tmp_path / "ann.json", images, annotations, CATEGORIES)
    return path, tmp_path / "imgs", json.loads(path.read_text())


def test_round_trip(tmp_path: Path) -> None:
    path, images_dir, written = _dataset(tmp_path)
    dataset = CocoDataset(path, images_dir, split="train")
    assert len(dataset) == 3
    assert dataset.names == ["house", "tree"] and dataset.category_ids == [3, 7]
    assert dataset.category_id_to_label(7) == 2 and dataset.label_to_category_id(1) == 3

    image, target = dataset[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert torch.equal(target["boxes"], torch.tensor([[1.5, 2.0, 11.5, 22.0], [30.0, 10.0, 60.0, 40.0]]))
    assert target["labels"].tolist() == [2, 1]
    assert (target["image_id"], target["file_name"], target["orig_size"]) == (10, "a.png", (48, 64))

    # The crowd annotation is not a training target, and an image without objects is kept as a negative.
    assert dataset[1][1]["labels"].tolist() == [1]
    assert dataset[2][1]["boxes"].shape == (0, 4) and dataset[2][1]["labels"].shape == (0,)

    # Back to COCO: same boxes in the original ids, crowd included and flagged, given areas kept.
    gt = dataset.coco_ground_truth()
    assert [c["id"] for c in gt["categories"]] == [3, 7]
    pairs = sorted((a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in gt["annotations"])
    expected = sorted(
        (a["image_id"], a["category_id"], [float(v) for v in a["bbox"]], a.get("iscrowd", 0))
        for a in written["annotations"]
    )
    assert pairs == expected
    assert {a["area"] for a in gt["annotations"] if a["image_id"] == 11 and not a["iscrowd"]} == {1000.0}
    assert all(a["id"] >= 1 for a in gt["annotations"])

    # Written again and read back, it is the same dataset.
    again = CocoDataset(
        write_coco(tmp_path / "again.json", gt["images"], gt["annotations"], gt["categories"]), images_dir
    )
    for i in range(len(dataset)):
        assert torch.equal(again.target(i)["boxes"], dataset.target(i)["boxes"])
        assert torch.equal(again.target(i)["labels"], dataset.target(i)["labels"])


def test_include_crowd_flags_them(tmp_path: Path) -> None:
    path, images_dir, _ = _dataset(tmp_path)
    target = CocoDataset(path, images_dir, include_crowd=True).target(1)
    assert target["labels"].tolist() == [1, 2] and target["iscrowd"].tolist() == [False, True]


def test_ground_truth_is_evaluable_by_pycocotools(tmp_path: Path) -> None:
    path, images_dir, _ = _dataset(tmp_path)
    dataset = CocoDataset(path, images_dir)
    gt = dataset.coco_ground_truth()
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_subset_and_dataloader(tmp_path: Path) -> None:
    path, images_dir, _ = _dataset(tmp_path)
    dataset = CocoDataset(path, images_dir)
    subset = dataset.subset([2, 0])
    assert len(subset) == 2 and subset.names == dataset.names
    assert [i["id"] for i in subset.coco_ground_truth()["images"]] == [12, 10]
    images, targets = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    assert [tuple(i.shape) for i in images] == [(3, 48, 64), (3, 40, 40), (3, 24, 32)]
    assert [t["image_id"] for t in targets] == [10, 11, 12]


def test_bad_boxes_are_dropped_or_clipped_with_one_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _image(tmp_path / "imgs" / "a.png", 50, 40)
    annotations = [
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, -5, 10]},  # negative width: dropped
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, 10, 0]},  # zero height: dropped
        {"image_id": 1, "category_id": 3, "bbox": [-5, 30, 20, 20]},  # sticks out left and bottom: clipped
        {"image_id": 1, "category_id": 7, "bbox": [45, 0, 30, 10]},  # sticks out right: clipped
        {"image_id": 1, "category_id": 7, "bbox": [60, 50, 5, 5]},  # entirely outside: dropped
        {"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},  # fine
    ]
    images = [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}]
    path = write_coco(tmp_path / "train.json", images, annotations, CATEGORIES)
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        dataset = CocoDataset(path, tmp_path / "imgs")
    target = dataset.target(0)
    assert target["boxes"].tolist() == [[0.0, 30.0, 15.0, 40.0], [45.0, 0.0, 50.0, 10.0], [1.0, 1.0, 6.0, 6.0]]
    assert target["labels"].tolist() == [1, 2, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == "fpn.data"]
    assert lines == [
        f"{path}: dropped 2 boxes with zero or negative size, dropped 1 box entirely outside the image, "
        "clipped 2 boxes to the image"
    ]


def _malformed(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Write one broken input; return the annotation file and the file name the error must mention."""
    _image(tmp_path / "imgs" / "a.png", 20, 20)
    image = {"id": 1, "file_name": "a.png", "width": 20, "height": 20}
    good = {"images": [image], "annotations": [], "categories": CATEGORIES}
    path = tmp_path / "ann.json"
    mention = "ann.json"
    if case == "truncated json":
        text = json.dumps(good)
        path.write_text(text[: len(text) // 2])
    elif case == "not json":
        path.write_text("images: [a.png]\n")
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00\x81" * 10)
    elif case == "json list":
        path.write_text("[]")
    elif case == "missing file":
        path = tmp_path / "nope.json"
        mention = "nope.json"
    else:
        data: dict[str, Any] = json.loads(json.dumps(good))
        if case.startswith("missing key "):
            del data[case.removeprefix("missing key ")]
        elif case == "image without file_name":
            del data["images"][0]["file_name"]
        elif case == "image with zero width":
            data["images"][0]["width"] = 0
        elif case == "duplicate image id":
            data["images"].append(dict(image))
        elif case == "empty image list":
            data["images"] = []
        elif case == "no categories":
            data["categories"] = []
        elif case == "unknown category id":
            data["annotations"] = [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]}]
        elif case == "unknown image id":
            data["annotations"] = [{"image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]}]
        elif case == "bbox of three numbers":
            data["annotations"] = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5]}]
        elif case == "bbox with text":
            data["annotations"] = [{"image_id": 1, "category_id": 3, "bbox": [0, "0", 5, 5]}]
        elif case == "bbox with nan":
            data["annotations"] = [{"image_id": 1, "category_id": 3, "bbox": [0, float("nan"), 5, 5]}]
        elif case == "annotation not an object":
            data["annotations"] = [[1, 3, 0, 0, 5, 5]]
        elif case == "missing image file":
            data["images"][0]["file_name"] = "gone.png"
            mention = "gone.png"
        else:
            raise AssertionError(case)
        path.write_text(json.dumps(data))
    return path, mention


@pytest.mark.parametrize(
    "case",
    [
        "truncated json",
        "not json",
        "binary",
        "json list",
        "missing file",
        "missing key images",
        "missing key annotations",
        "missing key categories",
        "image without file_name",
        "image with zero width",
        "duplicate image id",
        "empty image list",
        "no categories",
        "unknown category id",
        "unknown image id",
        "bbox of three numbers",
        "bbox with text",
        "bbox with nan",
        "annotation not an object",
        "missing image file",
    ],
)
def test_malformed_inputs_raise_one_line_errors_naming_the_file(tmp_path: Path, case: str) -> None:
    path, mention = _malformed(tmp_path, case)
    with pytest.raises(FpnError) as caught:
        CocoDataset(path, tmp_path / "imgs")
    message = str(caught.value)
    assert mention in message and "\n" not in message, message


def test_corrupt_or_mismatched_image_fails_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    _image(tmp_path / "imgs" / "small.png", 30, 20)
    images = [
        {"id": 1, "file_name": "bad.png", "width": 20, "height": 20},
        {"id": 2, "file_name": "small.png", "width": 100, "height": 100},
    ]
    path = write_coco(tmp_path / "ann.json", images, [], CATEGORIES)
    mismatch = r"small\.png: image is 30x20 pixels but .*ann\.json says 100x100"
    with pytest.raises(DataError, match=mismatch):
        CocoDataset(path, tmp_path / "imgs")  # the scan decodes every image up front
    # Without the scan, a strict dataset fails when the image is loaded (tests/data/test_corrupt_images.py
    # covers the scan and skipping).
    dataset = CocoDataset(path, tmp_path / "imgs", check_files=False, strict=True)
    with pytest.raises(DataError, match=r"bad\.png"):
        dataset[0]
    with pytest.raises(DataError, match=mismatch):
        dataset[1]


def test_names_must_agree_with_categories(tmp_path: Path) -> None:
    path, images_dir, _ = _dataset(tmp_path)
    assert CocoDataset(path, images_dir, names=["house", "tree"]).names == ["house", "tree"]
    with pytest.raises(DataError, match=r"ann\.json"):
        CocoDataset(path, images_dir, names=["tree", "house"])
