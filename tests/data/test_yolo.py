"""YOLO (Ultralytics) datasets: the data.yaml, the label path rule, label lines, and every malformed case."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from yolo_sets import NAMES, picture, roboflow_set, write_split, yolo_set

from fpn.data import dataset_names, load_dataset, load_spec
from fpn.data.yolo import YoloDataset
from fpn.data.yolo_labels import YoloLabelError, label_path
from fpn.errors import ConfigError, DataError


def test_boxes_in_pixels_negatives_and_order(tmp_path: Path) -> None:
    sizes = {"b.png": (64, 48), "a.jpg": (100, 50), "c.png": (32, 32)}
    data = yolo_set(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n\n2 0.25 0.5 0.5 1\n", "b": "  \n"}, sizes=sizes)
    dataset = load_dataset(data, "train")
    assert isinstance(dataset, YoloDataset) and dataset.names == NAMES and dataset.category_ids == [1, 2, 3]
    assert [r.file_name for r in dataset.records] == ["a.jpg", "b.png", "c.png"]  # sorted; ids 1..N
    assert [r.image_id for r in dataset.records] == [1, 2, 3]
    a = dataset.records[0]
    assert (a.width, a.height) == (100, 50)
    assert a.boxes.dtype == np.float64
    np.testing.assert_array_equal(a.boxes, [[40, 15, 60, 35], [0, 0, 50, 50]])
    assert a.labels.tolist() == [2, 3]
    assert len(dataset.records[1].labels) == 0 and len(dataset.records[2].labels) == 0  # empty, missing
    image, target = dataset[0]
    assert image.shape == (3, 50, 100) and target["boxes"].tolist() == [[40, 15, 60, 35], [0, 0, 50, 50]]
    assert dataset.root == tmp_path / "images" / "train"
    assert dataset_names(data) == NAMES


def test_label_path_rule() -> None:
    assert label_path(Path("/d/images/train/a.jpg")) == Path("/d/labels/train/a.txt")
    assert label_path(Path("/d/images/x/images/a.b.png")) == Path("/d/images/x/labels/a.b.txt")  # the last one
    assert label_path(Path("/d/pics/a.jpg")) == Path("/d/pics/a.txt")  # no images folder: beside the image
    assert label_path(Path("/d/pics/images.jpg")) == Path("/d/pics/images.txt")  # a file is not a folder


def test_polygon_line_is_its_bounding_box(tmp_path: Path) -> None:
    data = yolo_set(tmp_path, {"a": "0 0.1 0.2 0.5 0.1 0.3 0.6 0.2 0.4\n"}, sizes={"a.png": (100, 100)})
    np.testing.assert_allclose(load_dataset(data, "train").records[0].boxes, [[10, 10, 50, 60]])


def test_repeated_lines_and_zero_size_boxes_are_dropped_with_one_warning(tmp_path: Path, caplog) -> None:
    labels = {"a": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0 0.3\n", "b": "0 0.50 0.5 0.2 0.20\n" * 2}
    data = yolo_set(tmp_path, labels)
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        dataset = load_dataset(data, "train")
    assert [len(r.labels) for r in dataset.records] == [1, 1]
    (line,) = [r.message for r in caplog.records if "dropped" in r.message]
    first = tmp_path / "labels" / "train"
    assert f"dropped 1 box of zero size (first: {first / 'a.txt'}:3)" in line
    assert f"dropped 2 lines repeating an earlier one (first: {first / 'a.txt'}:2)" in line


def test_coordinates_within_ultralytics_tolerance_are_clipped(tmp_path: Path, caplog) -> None:
    data = yolo_set(tmp_path, {"a": "0 0.5 0.5 1.005 0.2\n"}, sizes={"a.png": (200, 100)})
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        boxes = load_dataset(data, "train").records[0].boxes
    np.testing.assert_allclose(boxes, [[0, 40, 200, 60]])
    assert any("clipped 1 box" in r.message for r in caplog.records)


GOOD = "0 0.5 0.5 0.2 0.2\n"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("0 0.5 0.5 0.2", "4 fields; expected 5 (class x_center y_center width height) or a polygon"),
        ("0 0.5 0.5 0.2 0.2 0.1", "6 fields"),
        ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4", "8 fields"),
        ("cat 0.5 0.5 0.2 0.2", "class 'cat' is not a number"),
        ("0 0.5 middle 0.2 0.2", "y_center 'middle' is not a number"),
        ("0 0.5 0.5 nan 0.2", "width 'nan' is not a finite number"),
        ("7 0.5 0.5 0.2 0.2", "class 7 out of range (names has 3)"),
        ("3 0.5 0.5 0.2 0.2", "class 3 out of range (names has 3)"),
        ("-1 0.5 0.5 0.2 0.2", "class -1 is negative"),
        ("1.5 0.5 0.5 0.2 0.2", "class '1.5' is not a whole number"),
        ("0 320 240 50 50", "x_center 320 is outside 0..1 (coordinates are normalised to the image size)"),
        ("0 0.5 0.5 0.2 -0.3", "height -0.3 is outside 0..1"),
        ("0 0.1 0.1 0.2 0.2 1.5 0.3", "x3 1.5 is outside 0..1"),
    ],
)
def test_a_malformed_line_is_one_line_naming_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    data = yolo_set(tmp_path, {"a": GOOD + line + "\n"})
    with pytest.raises(YoloLabelError) as caught:
        load_dataset(data, "train")
    assert isinstance(caught.value, DataError)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'labels' / 'train' / 'a.txt'}:2: {problem}") and "\n" not in message


def test_every_malformed_line_is_counted_and_the_first_named(tmp_path: Path) -> None:
    data = yolo_set(tmp_path, {"a": GOOD + "9 0.5 0.5 0.2 0.2\n", "b": "0 2 0.5 0.2 0.2\n0 x 0 0 0\n"})
    with pytest.raises(YoloLabelError) as caught:
        load_dataset(data, "train")
    first = tmp_path / "labels" / "train" / "a.txt"
    assert str(caught.value) == (
        f"{first}:2: class 9 out of range (names has 3) (and 2 more malformed lines; 2 label files to fix)"
    )


def test_a_class_written_as_a_float(tmp_path: Path) -> None:
    data = yolo_set(tmp_path, {"a": "2.0 0.5 0.5 0.2 0.2\n"})
    assert load_dataset(data, "train").records[0].labels.tolist() == [3]


def test_a_label_folder_where_a_file_should_be_and_no_labels_at_all(tmp_path: Path, caplog) -> None:
    data = yolo_set(tmp_path / "one", {"a": GOOD})
    (tmp_path / "one" / "labels" / "train" / "a.txt").unlink()
    (tmp_path / "one" / "labels" / "train" / "a.txt").mkdir()
    with pytest.raises(DataError, match=r"a\.txt: is a folder, not a label file"):
        load_dataset(data, "train")
    data = yolo_set(tmp_path / "two", {}, sizes={"a.png": (20, 20)})
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        load_dataset(data, "train")
    assert any("none of the 1 images has a label file" in r.message for r in caplog.records)


def test_names_as_a_dict_nc_only_and_explicit_format(tmp_path: Path) -> None:
    yolo_set(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "dict.yaml").write_text("train: images/train\nnames:\n  1: dog\n  0: cat\n  '2': bird\n")
    assert load_dataset(tmp_path / "dict.yaml", "train").names == NAMES
    (tmp_path / "nc.yaml").write_text("train: images/train\nnc: 2\n")
    assert load_dataset(tmp_path / "nc.yaml", "train").names == ["class_0", "class_1"]
    (tmp_path / "explicit.yaml").write_text("format: yolo\ntrain: images/train\nnames: [a, b]\nextra: kept\n")
    assert load_spec(tmp_path / "explicit.yaml").format == "yolo"
    (tmp_path / "small.yaml").write_text("train: images/train\nnames: [cat]\n")
    with pytest.raises(YoloLabelError, match="class 1 out of range"):
        load_dataset(tmp_path / "small.yaml", "train")


def test_list_file_splits_and_a_list_of_folders(tmp_path: Path) -> None:
    write_split(tmp_path / "part1", {"a.png": (40, 40)}, {"a": GOOD})
    write_split(tmp_path / "part2", {"b.png": (50, 30)}, {"b": "1 0.5 0.5 0.2 0.2\n"})
    listed = tmp_path / "lists" / "train.txt"
    listed.parent.mkdir()
    listed.write_text(f"../part1/images/a.png\n\n{tmp_path / 'part2' / 'images' / 'b.png'}\nnotes.md\n")
    (tmp_path / "lists" / "val.txt").write_text("./nothing.jpg\n")
    (tmp_path / "data.yaml").write_text(
        "train: lists/train.txt\nval: lists/val.txt\ntest: [part1/images, part2/images]\nnames: [cat, dog, bird]\n"
    )
    train = load_dataset(tmp_path / "data.yaml", "train")
    assert [r.path for r in train.records] == [tmp_path / "part1/images/a.png", tmp_path / "part2/images/b.png"]
    assert [r.labels.tolist() for r in train.records] == [[1], [2]]
    assert train.root == tmp_path  # the folder holding every image
    test = load_dataset(tmp_path / "data.yaml", "test")
    assert [r.file_name for r in test.records] == ["part1/images/a.png", "part2/images/b.png"]
    with pytest.raises(DataError, match=r"val\.txt:1: no such image file \./nothing\.jpg"):
        load_dataset(tmp_path / "data.yaml", "val")


def test_path_key_is_the_root(tmp_path: Path) -> None:
    write_split(tmp_path / "sets" / "pets", {"a.png": (40, 40)}, {"a": GOOD})
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pets.yaml").write_text("path: ../sets/pets\ntrain: images\nval: images\nnames: [cat]\n")
    dataset = load_dataset(tmp_path / "configs" / "pets.yaml", "val")
    assert dataset.records[0].labels.tolist() == [1]
    (tmp_path / "configs" / "gone.yaml").write_text("path: ../gone\ntrain: images\nnames: [cat]\n")
    with pytest.raises(DataError, match=r"gone/images: no such image folder or image list"):
        load_dataset(tmp_path / "configs" / "gone.yaml", "train")


def test_a_roboflow_export_loads_unchanged(tmp_path: Path) -> None:
    data = roboflow_set(tmp_path / "pets.v2i.yolov8")
    spec = load_spec(data)
    assert spec.format == "yolo" and list(spec.splits) == ["train", "val", "test"]
    train, val, test = (load_dataset(data, split) for split in ("train", "val", "test"))
    assert train.names == ["cat", "dog", "bird"] and len(train) == 2 and len(val) == 1 and len(test) == 1
    np.testing.assert_allclose(train.records[0].boxes, [[240, 120, 400, 360]])
    assert len(train.records[1].labels) == 0
    assert val.records[0].labels.tolist() == [3, 2] and val.root == tmp_path / "pets.v2i.yolov8" / "valid" / "images"
    np.testing.assert_allclose(test.records[0].boxes, [[200, 150, 600, 450]])


def test_pose_lines_are_read_for_their_box(tmp_path: Path) -> None:
    data = yolo_set(tmp_path, {"a": "0 0.5 0.5 0.5 0.5 0.4 0.4 2 0.6 0.6 0\n"}, sizes={"a.png": (100, 100)})
    (tmp_path / "pose.yaml").write_text("train: images/train\nnames: [person]\nkpt_shape: [2, 3]\n")
    np.testing.assert_allclose(load_dataset(tmp_path / "pose.yaml", "train").records[0].boxes, [[25, 25, 75, 75]])
    with pytest.raises(YoloLabelError, match="11 fields; expected 14"):  # shape checked: no match -> refused
        (tmp_path / "bad.yaml").write_text("train: images/train\nnames: [person]\nkpt_shape: [3, 3]\n")
        load_dataset(tmp_path / "bad.yaml", "train")
    assert data.is_file()


def test_an_unreadable_image_is_left_out_or_strict_refused(tmp_path: Path) -> None:
    data = yolo_set(tmp_path, {"a": GOOD, "b": GOOD})
    (tmp_path / "images" / "train" / "b.png").write_bytes(b"not a png")
    assert [r.file_name for r in load_dataset(data, "train").records] == ["a.png"]
    with pytest.raises(DataError, match=r"b\.png"):
        load_dataset(data, "train", strict=True)


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    picture(tmp_path / "images" / "a.png", 20, 20)
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\ncategory_ids: [1, 1]\n")
    with pytest.raises(ConfigError, match=r"data\.yaml: category_ids must be 1 distinct"):
        load_dataset(tmp_path / "data.yaml", "train")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    with pytest.raises(ConfigError, match=r"data\.yaml: no split 'val' \(has: train\)"):
        load_dataset(tmp_path / "data.yaml", "val")
