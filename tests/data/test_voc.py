"""Pascal VOC reader and writer: the 1-based coordinate convention, difficult objects, malformed inputs."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.data import VOC_CLASSES, VocDataset, VocSample, write_voc
from fpn.errors import DataError, FpnError

NAMES = ["cat", "dog"]


def _picture(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _write(root: Path) -> Path:
    samples = [
        VocSample("0001", _picture(60, 40), [[0, 0, 10, 5], [20.5, 10.25, 59, 40]], [1, 2], [False, True]),
        VocSample("0002", _picture(30, 50, 1), [[3, 4, 30, 50]], [2]),
        VocSample("0003", _picture(16, 16, 2), np.zeros((0, 4)), []),
    ]
    return write_voc(root, "trainval", samples, NAMES)


def test_round_trip_and_coordinate_convention(tmp_path: Path) -> None:
    root = _write(tmp_path / "VOC")
    # 0-based continuous (0, 0, 10, 5) is written as 1-based inclusive pixels 1..10 x 1..5.
    bndbox = ET.parse(root / "Annotations" / "0001.xml").getroot().find("object/bndbox")
    assert bndbox is not None
    assert [bndbox.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")] == ["1", "1", "10", "5"]
    assert (root / "ImageSets" / "Main" / "trainval.txt").read_text().split() == ["0001", "0002", "0003"]

    dataset = VocDataset(root, "trainval", NAMES)
    assert len(dataset) == 3 and dataset.names == NAMES and dataset.category_ids == [1, 2]
    image, target = dataset[0]
    assert image.shape == (3, 40, 60)
    assert target["boxes"].tolist() == [[0.0, 0.0, 10.0, 5.0]]  # the difficult dog is not a training target
    assert target["labels"].tolist() == [1]
    assert (target["image_id"], target["file_name"], target["orig_size"]) == (1, "0001.jpg", (40, 60))
    assert dataset.target(1)["boxes"].tolist() == [[3.0, 4.0, 30.0, 50.0]]
    assert dataset.target(2)["boxes"].shape == (0, 4)  # kept as a negative

    flagged = VocDataset(root, "trainval", NAMES, include_crowd=True).target(0)
    assert torch.equal(flagged["boxes"], torch.tensor([[0.0, 0.0, 10.0, 5.0], [20.5, 10.25, 59.0, 40.0]]))
    assert flagged["labels"].tolist() == [1, 2] and flagged["iscrowd"].tolist() == [False, True]

    gt = dataset.coco_ground_truth()
    assert [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in gt["annotations"]] == [
        (1, 1, [0.0, 0.0, 10.0, 5.0], 0),
        (1, 2, [20.5, 10.25, 38.5, 29.75], 1),
        (2, 2, [3.0, 4.0, 27.0, 46.0], 0),
    ]
    assert gt["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def test_default_names_are_the_voc_classes(tmp_path: Path) -> None:
    root = write_voc(tmp_path, "val", [VocSample("x", _picture(8, 8), [[1, 1, 4, 4]], [15])], VOC_CLASSES)
    dataset = VocDataset(root, "val")
    assert dataset.num_classes == 20 and dataset.names[14] == "person"
    assert dataset.target(0)["labels"].tolist() == [15]


def test_missing_size_is_read_from_the_image(tmp_path: Path) -> None:
    root = _write(tmp_path)
    path = root / "Annotations" / "0002.xml"
    tree = ET.parse(path)
    annotation = tree.getroot()
    size = annotation.find("size")
    assert size is not None
    annotation.remove(size)
    tree.write(path)
    assert VocDataset(root, "trainval", NAMES).records[1].width == 30


def test_bad_boxes_dropped_and_clipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    boxes = [[10, 10, 5, 20], [-4, 2, 8, 60], [1, 1, 5, 5]]  # negative width; outside top-left and bottom
    root = write_voc(tmp_path, "train", [VocSample("a", _picture(20, 30), boxes, [1, 2, 1])], NAMES)
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        target = VocDataset(root, "train", NAMES).target(0)
    assert target["boxes"].tolist() == [[0.0, 2.0, 8.0, 30.0], [1.0, 1.0, 5.0, 5.0]]
    assert [r.getMessage() for r in caplog.records] == [
        f"{root} (train): dropped 1 box with zero or negative size, clipped 1 box to the image"
    ]


def _break(root: Path, case: str) -> str:
    """Damage a written VOC folder in one way; return the file name the error must mention."""
    xml = root / "Annotations" / "0001.xml"
    if case == "bad xml":
        xml.write_text("<annotation><object><name>cat</name></annotation")
        return "0001.xml"
    if case == "missing xml":
        xml.unlink()
        return "0001.xml"
    if case == "missing image":
        (root / "JPEGImages" / "0002.jpg").unlink()
        return "0002.jpg"
    if case == "missing split file":
        (root / "ImageSets" / "Main" / "trainval.txt").unlink()
        return "trainval.txt"
    if case == "empty split file":
        (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n\n")
        return "trainval.txt"
    text = xml.read_text()
    if case == "unknown class":
        text = text.replace("<name>cat</name>", "<name>cow</name>")
    elif case == "missing bndbox":
        start, end = text.index("<bndbox>"), text.index("</bndbox>") + len("</bndbox>")
        text = text[:start] + text[end:]
    elif case == "text coordinate":
        text = text.replace("<xmin>1</xmin>", "<xmin>one</xmin>")
    elif case == "missing name":
        text = text.replace("<name>cat</name>", "")
    elif case == "negative image size":
        text = text.replace("<width>60</width>", "<width>-60</width>")
    else:
        raise AssertionError(case)
    xml.write_text(text)
    return "0001.xml"


@pytest.mark.parametrize(
    "case",
    [
        "bad xml",
        "missing xml",
        "missing image",
        "missing split file",
        "empty split file",
        "unknown class",
        "missing bndbox",
        "text coordinate",
        "missing name",
        "negative image size",
    ],
)
def test_malformed_inputs_raise_one_line_errors_naming_the_file(tmp_path: Path, case: str) -> None:
    root = _write(tmp_path)
    mention = _break(root, case)
    with pytest.raises(FpnError) as caught:
        VocDataset(root, "trainval", NAMES)
    message = str(caught.value)
    assert mention in message and "\n" not in message, message


def test_corrupt_image_is_left_out_or_fails_when_strict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write(tmp_path)
    (root / "JPEGImages" / "0003.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        dataset = VocDataset(root, "trainval", NAMES)
    assert len(dataset) == 2 and "1 of 3 images unreadable, left out: 0003.jpg" in caplog.text
    with pytest.raises(DataError, match=r"0003\.jpg"):
        VocDataset(root, "trainval", NAMES, strict=True)
    unscanned = VocDataset(root, "trainval", NAMES, check_files=False, strict=True)
    with pytest.raises(DataError, match=r"0003\.jpg"):
        unscanned[2]
