"""COCO-format annotations: ``{"images": [...], "annotations": [...], "categories": [...]}``.

Only what detection needs is read: each image's ``id``, ``file_name``, ``width``, ``height``; each
annotation's ``image_id``, ``category_id``, ``bbox`` (``[x, y, w, h]`` in pixels, 0-based continuous
coordinates) and the optional ``iscrowd`` and ``area``. Labels ``1..K`` follow the categories sorted by id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fpn.data.dataset import DetectionDataset, ImageRecord, Transform
from fpn.data.scan import readable_records
from fpn.data.validate import BoxReport, as_number, as_positive_int, clean_boxes
from fpn.errors import DataError


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file raises a one-line DataError."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise DataError(f"{path}: no such annotation file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an annotation file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (not UTF-8)") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as JSON atomically (a temporary file renamed into place), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file)
    os.replace(temporary, path)
    return path


def _field(entry: Any, key: str, source: str, where: str) -> Any:
    if not isinstance(entry, dict):
        raise DataError(f"{source}: {where} must be an object, got {type(entry).__name__}")
    if key not in entry:
        raise DataError(f"{source}: {where} has no {key!r}")
    return entry[key]


def _list(data: dict[str, Any], key: str, source: str) -> list[Any]:
    if key not in data:
        raise DataError(f"{source}: missing top-level key {key!r} (a COCO file has images, annotations, categories)")
    value = data[key]
    if not isinstance(value, list):
        raise DataError(f"{source}: {key!r} must be a list, got {type(value).__name__}")
    return value


def parse_categories(data: dict[str, Any], source: str) -> tuple[list[str], list[int]]:
    """Class names and category ids of a COCO dict, sorted by id (label ``i + 1`` is entry ``i``)."""
    categories = []
    for index, entry in enumerate(_list(data, "categories", source)):
        where = f"categories[{index}]"
        cid = _field(entry, "id", source, where)
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f"{source}: {where} id must be an integer, got {cid!r}")
        name = _field(entry, "name", source, where)
        categories.append((cid, str(name)))
    if not categories:
        raise DataError(f"{source}: no categories")
    categories.sort()
    ids = [cid for cid, _ in categories]
    if len(set(ids)) != len(ids):
        raise DataError(f"{source}: duplicate category ids in {ids}")
    return [name for _, name in categories], ids


class CocoDataset(DetectionDataset):
    """A COCO-format dataset: ``annotations_json`` plus the folder its ``file_name`` entries are relative to.

    Args:
        annotations_json: the COCO annotation file.
        images_dir: folder holding the images.
        names: optional expected class names; if given they must equal the categories' names (sorted by id),
            which catches a data YAML that disagrees with its annotation file.
        split: the split's name, for messages.
        transform: optional augmentation, see :mod:`fpn.data.augment`.
        include_crowd: keep ``iscrowd`` annotations in the training targets (flagged).
        check_files: check up front that every image file exists and decodes (see :mod:`fpn.data.scan`), so a
            missing file fails before training and an unreadable one is left out with a warning.
        strict: an unreadable image raises :class:`~fpn.errors.DataError`, up front or when loaded, instead of
            being left out or skipped.

    Boxes of zero or negative size are dropped and boxes outside the image clipped; one log line gives the
    counts. Images without annotations are kept as negatives. Malformed files, annotations of unknown images
    or categories, and missing image files raise :class:`~fpn.errors.DataError` naming the file.
    """

    def __init__(
        self,
        annotations_json: str | os.PathLike[str],
        images_dir: str | os.PathLike[str],
        *,
        names: Sequence[str] | None = None,
        split: str = "",
        transform: Transform | None = None,
        include_crowd: bool = False,
        check_files: bool = True,
        strict: bool = False,
    ) -> None:
        path = Path(annotations_json)
        images_dir = Path(images_dir)
        source = str(path)
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{source}: must hold a JSON object with images, annotations and categories")
        category_names, category_ids = parse_categories(data, source)
        if names is not None and list(names) != category_names:
            raise DataError(f"{source}: categories are {category_names} but the class names given are {list(names)}")
        label_of = {cid: label for label, cid in enumerate(category_ids, start=1)}

        images = _list(data, "images", source)
        if not images:
            raise DataError(f"{source}: the image list is empty")
        entries: dict[int, dict[str, Any]] = {}
        order: list[int] = []
        for index, entry in enumerate(images):
            where = f"images[{index}]"
            image_id = _field(entry, "id", source, where)
            if isinstance(image_id, bool) or not isinstance(image_id, int):
                raise DataError(f"{source}: {where} id must be an integer, got {image_id!r}")
            if image_id in entries:
                raise DataError(f"{source}: duplicate image id {image_id} ({where})")
            file_name = _field(entry, "file_name", source, where)
            if not isinstance(file_name, str) or not file_name:
                raise DataError(f"{source}: {where} file_name must be a non-empty string, got {file_name!r}")
            width = as_positive_int(_field(entry, "width", source, where), source, f"{where} width")
            height = as_positive_int(_field(entry, "height", source, where), source, f"{where} height")
            entries[image_id] = {"file_name": file_name, "width": width, "height": height, "anns": []}
            order.append(image_id)

        for index, ann in enumerate(_list(data, "annotations", source)):
            where = f"annotations[{index}]"
            image_id = _field(ann, "image_id", source, where)
            if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in entries:
                raise DataError(f"{source}: {where} refers to unknown image id {image_id!r}")
            category_id = _field(ann, "category_id", source, where)
            if isinstance(category_id, bool) or not isinstance(category_id, int) or category_id not in label_of:
                known = ", ".join(str(c) for c in category_ids)
                raise DataError(f"{source}: {where} has unknown category id {category_id!r} (known: {known})")
            bbox = _field(ann, "bbox", source, where)
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DataError(f"{source}: {where} bbox must be a list [x, y, width, height], got {bbox!r}")
            x, y, w, h = (as_number(v, source, f"{where} bbox entry") for v in bbox)
            crowd = bool(ann.get("iscrowd", 0))
            area = ann.get("area")
            area = as_number(area, source, f"{where} area") if area is not None else None
            entries[image_id]["anns"].append((x, y, x + w, y + h, label_of[category_id], crowd, area))

        report = BoxReport()
        records = []
        for image_id in order:
            entry = entries[image_id]
            image_path = images_dir / entry["file_name"]
            if check_files and not image_path.is_file():
                raise DataError(f"{image_path}: no such image file (referenced by {source}, image id {image_id})")
            boxes, labels, iscrowd, areas = ImageRecord.empty_annotations()
            if entry["anns"]:
                raw = np.array([a[:4] for a in entry["anns"]], dtype=np.float64)
                boxes, keep = clean_boxes(raw, entry["width"], entry["height"], report)
                kept = [a for a, k in zip(entry["anns"], keep, strict=True) if k]
                labels = np.array([a[4] for a in kept], dtype=np.int64)
                iscrowd = np.array([a[5] for a in kept], dtype=bool)
                box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                areas = np.array(
                    [a[6] if a[6] is not None else float(b) for a, b in zip(kept, box_areas, strict=True)],
                    dtype=np.float64,
                )
            records.append(
                ImageRecord(
                    image_id=image_id,
                    file_name=entry["file_name"],
                    path=image_path,
                    height=entry["height"],
                    width=entry["width"],
                    boxes=boxes,
                    labels=labels,
                    iscrowd=iscrowd,
                    areas=areas,
                )
            )
        report.log(source)
        if check_files:
            key = f"coco {path.resolve()} {images_dir.resolve()}"
            records = readable_records(records, source, key, strict=strict)
        super().__init__(
            records,
            category_names,
            category_ids,
            root=images_dir,
            split=split,
            source=source,
            transform=transform,
            include_crowd=include_crowd,
            strict=strict,
        )


def write_coco(
    path: str | os.PathLike[str],
    images: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
    categories: Sequence[dict[str, Any]],
) -> Path:
    """Write a COCO annotation file (atomically). Annotations without an ``id`` are numbered from 1.

    ``area`` defaults to the box area and ``iscrowd`` to 0, the two fields pycocotools needs.
    """
    anns = []
    for number, ann in enumerate(annotations, start=1):
        ann = dict(ann)
        ann.setdefault("id", number)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        anns.append(ann)
    data = {"images": list(images), "annotations": anns, "categories": list(categories)}
    return write_json(path, data)
