"""``fpn convert`` and ``fpn train --data <Ultralytics data.yaml>`` through ``fpn.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from yolo_sets import roboflow_set, write_split

from fpn.cli import main
from fpn.io import read_state_dict

FAST = ["workers=0", "train.batch_size=1", "lr=1e-2"]


@pytest.fixture
def roboflow(tmp_path: Path) -> Path:
    """A Roboflow-shaped export of images from 400 to 1000 px a side."""
    data = roboflow_set(tmp_path / "pets")
    write_split(tmp_path / "pets" / "train", {"e.jpg": (1000, 750)}, {"e": "2 0.3 0.4 0.2 0.1\n0 0.7 0.6 0.1 0.3\n"})
    return data


def test_convert_to_each_format_and_back(roboflow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(roboflow), "--to", "coco", "--output", str(tmp_path / "coco")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "train: 3 images, 3 objects",
        "val: 1 images, 2 objects",
        "test: 1 images, 1 objects",
        f"coco dataset -> {tmp_path / 'coco'}; use it with --data {tmp_path / 'coco' / 'data.yaml'}",
    ]
    coco = json.loads((tmp_path / "coco" / "train.json").read_text())
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        ("a.jpg", 640, 480),
        ("b.jpg", 500, 400),
        ("e.jpg", 1000, 750),
    ]
    assert coco["annotations"][0]["bbox"] == [240.0, 120.0, 160.0, 240.0]
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]

    voc = tmp_path / "voc"
    assert main(["convert", str(tmp_path / "coco" / "data.yaml"), "--to", "voc", "-o", str(voc), "--link"]) == 0
    assert (voc / "train" / "ImageSets" / "Main" / "train.txt").read_text().split() == ["a", "b", "e"]
    assert main(["convert", str(voc / "data.yaml"), "--to", "yolo", "--output", str(tmp_path / "yolo")]) == 0
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "cat", 1: "dog", 2: "bird"} and data["val"] == "images/val"
    original = (roboflow.parent / "train" / "labels" / "e.txt").read_text().split()
    assert (tmp_path / "yolo" / "labels" / "train" / "e.txt").read_text().split() == original
    assert (tmp_path / "yolo" / "labels" / "train" / "b.txt").read_text() == ""
    capsys.readouterr()

    # Again into the same folder: refused with one line, then replaced with --force.
    argv = ["convert", str(roboflow), "--to", "yolo", "--output", str(tmp_path / "yolo")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fpn: error: {tmp_path / 'yolo'}: folder is not empty (--force replaces it)"
    assert main([*argv, "--force"]) == 0


def test_convert_errors_are_one_line(roboflow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (roboflow.parent / "valid" / "labels" / "c.txt").write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    assert main(["convert", str(roboflow), "--to", "coco", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    label_file = roboflow.parent / "valid" / "labels" / "c.txt"
    assert err == f"fpn: error: {label_file}:2: class 5 out of range (names has 3)"
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as caught:
        main(["convert", str(roboflow), "--to", "darknet", "--output", str(tmp_path / "out")])
    assert caught.value.code == 2 and "invalid choice: 'darknet'" in capsys.readouterr().err


def test_train_on_an_ultralytics_data_yaml(roboflow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    argv = ["train", "--data", str(roboflow), "--model", "micro-fpn", "--out", str(run), "--iters", "2", *FAST]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run)
    checkpoint = read_state_dict(run / "model.pt")
    assert checkpoint["iteration"] == 2
    assert json.loads((run / "metrics.json").read_text())["metrics"]["AP"] is not None
    assert main(["eval", "--weights", str(run / "model.pt"), "--data", str(roboflow), "--split", "test"]) == 0
