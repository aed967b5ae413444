"""fpn.data.convert: round trips between COCO, YOLO and VOC, what each format keeps, and the output folder rules."""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from yolo_sets import picture, roboflow_set

from fpn.data import VocSample, load_dataset, write_coco, write_voc
from fpn.data.convert import convert
from fpn.errors import DataError, OutputError

# Sizes of 400-1000 px, so that the normalised numbers have the digits real exports have.
SIZES = [(640, 480), (1000, 750), (417, 923)]
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 10, "name": "bird"}]


def coco_set(root: Path, *, crowd: bool = False) -> Path:
    """A COCO set (train and val) with odd category and image ids and fractional boxes."""
    rng = np.random.default_rng(0)
    text = "format: coco\n"
    for split, first_id in (("train", 101), ("val", 900)):
        images, annotations = [], []
        for number, (width, height) in enumerate(SIZES):
            name = f"sub/{split}{number}.jpg" if number == 2 else f"{split}{number}.png"
            picture(root / split / name, width, height, number)
            image_id = first_id + 7 * number
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for _ in range(number + 1):  # the first image has one object, the last three
                x, y = rng.uniform(0, width - 60), rng.uniform(0, height - 60)
                box = [x, y, rng.uniform(1, 60), rng.uniform(1, 60)]
                annotations.append({"image_id": image_id, "category_id": int(rng.choice([3, 7, 10])), "bbox": box})
        if crowd:
            annotations.append({"image_id": first_id, "category_id": 3, "bbox": [1, 1, 30, 30], "iscrowd": 1})
        write_coco(root / f"{split}.json", images, annotations, CATEGORIES)
        text += f"{split}: {{annotations: {split}.json, images: {split}/}}\n"
    (root / "data.yaml").write_text(text)
    return root / "data.yaml"


def tree_digest(root: Path) -> str:
    """One digest of every file's path and bytes under ``root``: equal digests, untouched tree."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def by_file(data: Path, split: str) -> dict[str, tuple]:
    """Per file name: the image size, boxes (xyxy), category ids and crowd flags, as fpn reads them."""
    dataset = load_dataset(data, split)
    return {
        r.file_name: (
            (r.width, r.height),
            r.boxes,
            [dataset.label_to_category_id(label) for label in r.labels],
            r.iscrowd.tolist(),
        )
        for r in dataset.records
    }


def label_numbers(root: Path) -> dict[str, list[list[float]]]:
    """Every YOLO label file under ``root/labels`` as its lines of numbers."""
    return {
        str(p.relative_to(root / "labels")): [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
        for p in sorted((root / "labels").rglob("*.txt"))
    }


def test_coco_to_yolo_to_coco_keeps_images_categories_and_boxes(tmp_path: Path) -> None:
    source = coco_set(tmp_path / "coco")
    before = tree_digest(tmp_path / "coco")
    yolo = convert(source, "yolo", tmp_path / "yolo")
    data = yaml.safe_load(yolo.data_yaml.read_text())
    assert data == {
        "train": "images/train",
        "val": "images/val",
        "nc": 3,
        "names": {0: "cat", 1: "dog", 2: "bird"},
        "category_ids": [3, 7, 10],
    }
    assert (tmp_path / "yolo" / "images" / "train" / "sub" / "train2.jpg").is_file()
    assert (tmp_path / "yolo" / "labels" / "train" / "sub" / "train2.txt").is_file()
    back = convert(yolo.data_yaml, "coco", tmp_path / "back")
    assert tree_digest(tmp_path / "coco") == before  # the source is never written to
    for split in ("train", "val"):
        original, returned = by_file(source, split), by_file(back.data_yaml, split)
        assert returned.keys() == original.keys()
        for name, (size, boxes, categories, crowd) in original.items():
            assert returned[name][0] == size and returned[name][2] == categories and returned[name][3] == crowd
            np.testing.assert_allclose(returned[name][1], boxes, rtol=0, atol=2e-10 * max(size))
            assert not np.array_equal(returned[name][1], np.round(boxes)), "boxes should be fractional"
    restored = load_dataset(back.data_yaml, "val")
    assert restored.names == ["cat", "dog", "bird"] and restored.category_ids == [3, 7, 10]
    assert [r.image_id for r in restored.records] == [1, 2, 3]  # YOLO has no image ids: 1..N in path order


def test_yolo_to_coco_to_yolo_gives_back_every_number(tmp_path: Path) -> None:
    source = roboflow_set(tmp_path / "rf")
    lines = {
        "a": "0 0.5 0.5 0.25 0.5\n2 0.123456 0.654321 0.0123456789 0.2\n1 0.4 0.3 0.1 0.1\n",
        "b": "",
    }
    for stem, text in lines.items():
        (tmp_path / "rf" / "train" / "labels" / f"{stem}.txt").write_text(text)
    (tmp_path / "rf" / "test" / "labels" / "d.txt").unlink()  # a negative without a label file
    coco = convert(source, "coco", tmp_path / "coco")
    back = convert(coco.data_yaml, "yolo", tmp_path / "yolo")
    returned = label_numbers(tmp_path / "yolo")
    assert returned["train/a.txt"] == [[float(v) for v in line.split()] for line in lines["a"].splitlines()]
    assert returned["train/b.txt"] == [] and returned["test/d.txt"] == []
    valid = (tmp_path / "rf" / "valid" / "labels" / "c.txt").read_text().splitlines()
    assert returned["val/c.txt"] == [[float(v) for v in line.split()] for line in valid]
    assert "category_ids" not in yaml.safe_load(back.data_yaml.read_text())  # 1..K need no keeping


def test_voc_round_trips(tmp_path: Path) -> None:
    x1, x2 = picture(tmp_path / "src" / "x1.jpg", 500, 400), picture(tmp_path / "src" / "x2.png", 430, 610)
    samples = [
        VocSample("x1", x1, [[0, 0, 10, 5], [20.5, 10.25, 499, 400]], [1, 2]),
        VocSample("x2", x2, [[3, 4, 30, 50]], [2], [True]),  # a PNG: JPEGImages/x2.png, found by <filename>
    ]
    write_voc(tmp_path / "VOC", "trainval", samples, ["cat", "dog"])
    (tmp_path / "voc.yaml").write_text("format: voc\nnames: [cat, dog]\ntrain: {root: VOC, split: trainval}\n")
    coco = convert(tmp_path / "voc.yaml", "coco", tmp_path / "coco")
    back = convert(coco.data_yaml, "voc", tmp_path / "back")
    original, returned = by_file(tmp_path / "voc.yaml", "train"), by_file(back.data_yaml, "train")
    assert original.keys() == returned.keys() == {"x1.jpg", "x2.png"}
    for name, (size, boxes, categories, crowd) in original.items():
        assert returned[name][0] == size and returned[name][2] == categories and returned[name][3] == crowd
        np.testing.assert_array_equal(returned[name][1], boxes)  # VOC -> COCO -> VOC is exact
    first = ET.parse(tmp_path / "VOC" / "Annotations" / "x1.xml").find("object[2]/bndbox")
    again = ET.parse(tmp_path / "back" / "train" / "Annotations" / "x1.xml").find("object[2]/bndbox")
    assert first is not None and again is not None
    assert [e.text for e in first] == [e.text for e in again] == ["21.5", "11.25", "499", "400"]

    # COCO -> VOC -> COCO: boxes to 0.01 px (VOC's written precision), crowd kept as difficult.
    source = coco_set(tmp_path / "coco2", crowd=True)
    voc = convert(source, "voc", tmp_path / "voc2")
    original, returned = by_file(source, "val"), by_file(voc.data_yaml, "val")
    assert original.keys() == returned.keys()
    for name, (_, boxes, categories, crowd) in original.items():
        np.testing.assert_allclose(returned[name][1], boxes, rtol=0, atol=0.005 + 1e-9)
        assert [["cat", "dog", "bird"][[3, 7, 10].index(c)] for c in categories] == [
            ["cat", "dog", "bird"][c - 1] for c in returned[name][2]
        ]
        assert returned[name][3] == crowd
    assert any(any(flags) for *_, flags in returned.values())


def test_crowd_objects_are_left_out_of_yolo_and_counted(tmp_path: Path, caplog) -> None:
    source = coco_set(tmp_path / "coco", crowd=True)
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        result = convert(source, "yolo", tmp_path / "yolo")
    assert result.splits["train"].left_out == 1 and result.splits["train"].objects == 6
    assert any("left out 2 crowd or difficult objects" in r.message for r in caplog.records)


def test_output_folder_rules(tmp_path: Path) -> None:
    source = roboflow_set(tmp_path / "rf")
    before = tree_digest(tmp_path / "rf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"out: folder is not empty \(--force replaces it\)"):
        convert(source, "coco", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    convert(source, "coco", tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "data.yaml").is_file()
    with pytest.raises(OutputError, match="holds the source's file"):
        convert(source, "voc", tmp_path / "rf", force=True)
    with pytest.raises(OutputError, match="inside the source's image folder"):
        convert(source, "voc", tmp_path / "rf" / "train" / "images" / "voc")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        convert(source, "voc", tmp_path / "a_file")
    assert tree_digest(tmp_path / "rf") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "out", "rf"]  # no temporary folders left


def test_a_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    source = roboflow_set(tmp_path / "rf")
    picture(tmp_path / "rf" / "train" / "images" / "a.png", 64, 64)  # a.jpg and a.png: one YOLO label file
    (tmp_path / "rf" / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    coco = convert(source, "coco", tmp_path / "coco")
    with pytest.raises(DataError, match=r"a\.jpg and a\.png would share the label file labels/train/a\.txt"):
        convert(coco.data_yaml, "yolo", tmp_path / "yolo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "rf"]


def test_images_are_copied_or_with_link_hard_linked(tmp_path: Path) -> None:
    source = roboflow_set(tmp_path / "rf")
    original = tmp_path / "rf" / "train" / "images" / "a.jpg"
    convert(source, "coco", tmp_path / "copied")
    convert(source, "coco", tmp_path / "linked", link=True)
    copied, linked = tmp_path / "copied" / "train" / "a.jpg", tmp_path / "linked" / "train" / "a.jpg"
    assert copied.read_bytes() == linked.read_bytes() == original.read_bytes()
    assert not copied.samefile(original) and linked.samefile(original)
