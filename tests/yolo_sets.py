"""Small YOLO-format datasets for the tests: images of given sizes, label files of given text, a data.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ["cat", "dog", "bird"]


def picture(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A smooth random picture (small as a file, at any size) saved at ``path`` (JPEG or PNG by suffix)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path)
    return path


def write_split(
    folder: Path, images: Mapping[str, tuple[int, int]], labels: Mapping[str, str], *, seed: int = 0
) -> Path:
    """``folder/images/<name>`` of the sizes ``images`` gives, and ``folder/labels/<stem>.txt`` for ``labels``."""
    for number, (name, (width, height)) in enumerate(images.items()):
        picture(folder / "images" / name, width, height, seed + number)
    for stem, text in labels.items():
        path = folder / "labels" / f"{stem}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder / "images"


def yolo_set(root: Path, labels: Mapping[str, str], *, sizes: Mapping[str, tuple[int, int]] | None = None) -> Path:
    """A one-split (train) Ultralytics dataset under ``root``: ``images/train``, ``labels/train``, data.yaml."""
    sizes = sizes or {f"{stem}.png": (64, 48) for stem in labels}
    for number, (name, (width, height)) in enumerate(sizes.items()):
        picture(root / "images" / "train" / name, width, height, number)
    for stem, text in labels.items():
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text("train: images/train\nnames: [cat, dog, bird]\n")
    return root / "data.yaml"


def roboflow_set(root: Path) -> Path:
    """A folder laid out as Roboflow exports "YOLOv8": train/, valid/, test/ beside a data.yaml with ../ paths."""
    write_split(root / "train", {"a.jpg": (640, 480), "b.jpg": (500, 400)}, {"a": "0 0.5 0.5 0.25 0.5\n", "b": ""})
    write_split(root / "valid", {"c.jpg": (416, 416)}, {"c": "2 0.25 0.75 0.1 0.2\n1 0.5 0.5 0.2 0.2\n"}, seed=5)
    write_split(root / "test", {"d.jpg": (800, 600)}, {"d": "1 0.5 0.5 0.5 0.5\n"}, seed=7)
    (root / "data.yaml").write_text(
        "train: ../train/images\n"
        "val: ../valid/images\n"
        "test: ../test/images\n"
        "\n"
        "nc: 3\n"
        "names: ['cat', 'dog', 'bird']\n"
        "\n"
        "roboflow:\n"
        "  workspace: someone\n"
        "  project: pets\n"
        "  version: 2\n"
        "  license: CC BY 4.0\n"
        "  url: https://universe.roboflow.com/someone/pets/dataset/2\n"
    )
    return root / "data.yaml"
