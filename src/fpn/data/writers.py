"""A dataset as fpn reads it, written in each format: one split's files, and its entry in the dataset YAML.

What is written is what training reads: boxes already clipped to the image, zero-size boxes and repeated YOLO
lines dropped, unreadable images left out. What each format can hold:

- COCO keeps everything: category ids, image ids, crowd flags, areas.
- YOLO keeps the classes in order (class ``i`` is the ``i``-th category by id) and writes the category ids to
  the YAML's ``category_ids`` key when they are not ``1..K``, so that they come back; image ids become ``1..N``
  in path order. It has no crowd or difficult flag: those objects are left out (as Ultralytics' own COCO
  converter does), and counted. Numbers are written with 10 decimals (:mod:`fpn.data.yolo_labels`).
- VOC keeps names, not ids (they become ``1..K``); crowd objects become ``difficult``; coordinates are written
  to 0.01 px (VOC files hold whole pixels by convention; fractions are kept rather than moved).

Every split lives in its own folder, so that the same file name in two splits cannot collide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpn.data.coco import write_coco
from fpn.data.dataset import DetectionDataset
from fpn.data.voc import VocSample, write_voc
from fpn.data.yolo_labels import format_lines, label_path
from fpn.errors import DataError

#: ``place(source, destination)``: put an image file at a new path (copy, or hard link).
Place = Callable[[Path, Path], object]

#: The formats ``fpn convert`` writes.
TARGETS = ("coco", "yolo", "voc")


@dataclass(frozen=True)
class WrittenSplit:
    """What one split's writer did: its dataset YAML entry, and how many images and objects it wrote."""

    entry: Any
    images: int
    objects: int
    left_out: int = 0  # objects the format cannot hold (crowd / difficult ones, in YOLO)


def _put(dataset: DetectionDataset, folder: Path, place: Place) -> dict[int, Path]:
    """Every image of the split at ``folder / file_name``; the destination of each record, by index."""
    placed = {}
    for index, record in enumerate(dataset.records):
        destination = folder / record.file_name
        destination.parent.mkdir(parents=True, exist_ok=True)
        place(record.path, destination)
        placed[index] = destination
    return placed


def write_coco_split(dataset: DetectionDataset, out: Path, split: str, place: Place) -> WrittenSplit:
    """``<split>.json`` and the images in ``<split>/``, as :meth:`DetectionDataset.coco_ground_truth` has them."""
    _put(dataset, out / split, place)
    truth = dataset.coco_ground_truth()
    write_coco(out / f"{split}.json", truth["images"], truth["annotations"], truth["categories"])
    entry = {"annotations": f"{split}.json", "images": f"{split}/"}
    return WrittenSplit(entry, len(truth["images"]), len(truth["annotations"]))


def write_yolo_split(dataset: DetectionDataset, out: Path, split: str, place: Place) -> WrittenSplit:
    """The images in ``images/<split>/``, a label file for each (empty for a negative) in ``labels/<split>/``."""
    labels_of: dict[Path, str] = {}
    for record in dataset.records:
        labels = label_path(out / "images" / split / record.file_name)
        if labels in labels_of:  # a.jpg and a.png in one folder: YOLO has one label file for both
            raise DataError(
                f"{dataset.source}: {labels_of[labels]} and {record.file_name} would share the label file "
                f"{labels.relative_to(out)}; rename one"
            )
        labels_of[labels] = record.file_name
    placed = _put(dataset, out / "images" / split, place)
    objects = left_out = 0
    for index, record in enumerate(dataset.records):
        keep = ~record.iscrowd
        left_out += int(record.iscrowd.sum())
        objects += int(keep.sum())
        text = format_lines(record.boxes[keep], record.labels[keep] - 1, record.width, record.height)
        # A plain write: the whole output is built in a temporary folder and renamed into place at the end.
        label_path(placed[index]).parent.mkdir(parents=True, exist_ok=True)
        label_path(placed[index]).write_text(text, encoding="utf-8")
    return WrittenSplit(f"images/{split}", len(dataset.records), objects, left_out)


def write_voc_split(dataset: DetectionDataset, out: Path, split: str, place: Place) -> WrittenSplit:
    """A VOC root ``<split>/`` (Annotations, JPEGImages, ImageSets/Main/<split>.txt); ids are file names."""
    samples = [
        VocSample(str(Path(r.file_name).with_suffix("").as_posix()), r.path, r.boxes, r.labels, r.iscrowd)
        for r in dataset.records
    ]
    stems = [sample.stem for sample in samples]
    if len(set(stems)) != len(stems):
        twice = next(stem for stem in stems if stems.count(stem) > 1)
        raise DataError(f"{dataset.source}: two images are named {twice}.* and VOC names an image by its stem")
    write_voc(out / split, split, samples, dataset.names, place=place)
    return WrittenSplit({"root": split, "split": split}, len(samples), dataset.num_objects())


WRITERS: dict[str, Callable[[DetectionDataset, Path, str, Place], WrittenSplit]] = {
    "coco": write_coco_split,
    "yolo": write_yolo_split,
    "voc": write_voc_split,
}


def dataset_yaml(target: str, names: list[str], category_ids: list[int], entries: dict[str, Any]) -> dict[str, Any]:
    """The dataset YAML of a written dataset: fpn's for COCO and VOC, an Ultralytics data.yaml for YOLO.

    The YOLO file has no ``path``: Ultralytics then takes the YAML's folder, so it loads from anywhere (a
    ``path: .`` would be read from the current folder).
    """
    if target != "yolo":
        return {"format": target, "names": names, **entries}
    data: dict[str, Any] = dict(entries)
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    if category_ids != list(range(1, len(names) + 1)):
        data["category_ids"] = category_ids
    return data
