"""The dataset YAML: both formats, relative paths, the built-in synthetic set, and config errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpn.data import CocoDataset, VocDataset, VocSample, dataset_names, load_dataset, load_spec, write_coco, write_voc
from fpn.data import spec as spec_module
from fpn.data.synthetic import CLASSES, make_synthetic
from fpn.errors import ConfigError

CATEGORIES = [{"id": 1, "name": "tree"}]


def _coco_folder(root: Path) -> Path:
    """A COCO dataset with train and val splits and its YAML, in ``root``."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        Image.new("RGB", (32, 24)).save(root / split / "a.png")
        images = [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}]
        annotations = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]
        write_coco(root / f"{split}.json", images, annotations, CATEGORIES)
    (root / "data.yaml").write_text(
        "format: coco\n"
        "train: {annotations: train.json, images: train/}\n"
        "val:   {annotations: val.json,   images: val}\n"
    )
    return root / "data.yaml"


def test_coco_yaml_with_paths_relative_to_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _coco_folder(tmp_path / "set")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    dataset = load_dataset(os.path.relpath(path), "val")
    assert isinstance(dataset, CocoDataset) and dataset.split == "val"
    assert dataset.names == ["tree"] and dataset[0][1]["boxes"].tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert dataset_names(path) == ["tree"]
    spec = load_spec(path)
    assert spec.format == "coco" and set(spec.splits) == {"train", "val"}
    assert spec.split("train").annotations == path.parent / "train.json"


def test_voc_yaml_split_defaults_to_the_key(tmp_path: Path) -> None:
    picture = Image.fromarray(np.zeros((10, 10, 3), np.uint8))
    write_voc(tmp_path / "VOC", "train", [VocSample("a", picture, [[0, 0, 5, 5]], [2])], ["cat", "dog"])
    write_voc(tmp_path / "VOC", "test", [VocSample("b", picture, [[1, 1, 5, 5]], [1])], ["cat", "dog"])
    (tmp_path / "voc.yaml").write_text(
        "format: voc\nnames: [cat, dog]\ntrain: {root: VOC}\nval: {root: VOC, split: test}\n"
    )
    train = load_dataset(tmp_path / "voc.yaml", "train")
    val = load_dataset(tmp_path / "voc.yaml", "val")
    assert isinstance(train, VocDataset) and train.target(0)["labels"].tolist() == [2]
    assert val.target(0)["labels"].tolist() == [1]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("format: coco\ntrain: {annotations: a.json, images: i}\nextra: 1\n", "'extra'"),
        ("train: {annotations: a.json, images: i}\n", "'format'"),
        ("format: darknet\ntrain: {annotations: a.json, images: i}\n", "format"),
        ("format: yolo\nnames: [a]\ntrain: {annotations: a.json, images: i}\n", "train"),
        ("train: images/train\nnames: [a, b]\nnc: 3\n", "nc is 3"),
        ("train: images/train\nnames: {0: a, 2: b}\n", "names keys"),
        ("train: images/train\nnames: [a, a]\n", "names"),
        ("format: yolo\ntrain: images/train\n", "names (or nc)"),
        ("train: images/train\nnames: [a]\nkpt_shape: 17\n", "kpt_shape"),
        ("format: coco\ntrain: {annotations: a.json}\n", "'train.images'"),
        ("format: coco\ntrain: {annotations: a.json, images: i, root: x}\n", "'train.root'"),
        ("format: voc\nval: {split: test}\n", "'val.root'"),
        ("format: coco\ntrain: a.json\n", "train"),
        ("format: coco\ntrain: {annotations: 3, images: i}\n", "train.annotations"),
        ("format: coco\nnames: tree\ntrain: {annotations: a.json, images: i}\n", "names"),
        ("format: coco\nnames: [a, a]\ntrain: {annotations: a.json, images: i}\n", "names"),
        ("format: coco\n", "no splits"),
        ("format: coco\ntrain: {annotations: a.json, images: [i\n", "malformed YAML"),
        ("- format\n- coco\n", "mapping"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_dataset(path, "train")
    message = str(caught.value)
    assert str(path) in message and key in message and "\n" not in message, message


def test_missing_split_and_missing_file(tmp_path: Path) -> None:
    path = _coco_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.yaml: no split 'test' \(has: train, val\)"):
        load_dataset(path, "test")
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such dataset YAML file, and not a built-in data set"):
        load_dataset(tmp_path / "nope.yaml", "train")


def test_builtin_synthetic_is_generated_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real built-in is 1200 images; a tiny stand-in keeps the test fast but goes through the same path.
    monkeypatch.setenv("FPN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        spec_module.BUILTIN, "synthetic", lambda cache: make_synthetic(cache / "synthetic", num_train=3, num_val=2)
    )
    assert spec_module.cache_dir() == tmp_path / "cache"
    val = load_dataset("synthetic", "val")
    assert len(val) == 2 and val.names == list(CLASSES)
    assert (tmp_path / "cache" / "synthetic" / "data.yaml").is_file()
    assert dataset_names("synthetic") == list(CLASSES)


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FPN_CACHE", raising=False)
    assert spec_module.cache_dir() == Path.home() / ".cache" / "fpn"
