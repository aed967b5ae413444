"""YOLO-format (Ultralytics) datasets: images, one label file per image, classes from a ``data.yaml``.

The layout and the YAML are Ultralytics' (see :mod:`fpn.data.yolo_spec`); what a label line may hold, and what
is refused, dropped or clipped, is in :mod:`fpn.data.yolo_labels`. Labels are normalised to the image, so each
image's size is read from its header (not decoded) to turn them into pixels; the up-front scan then decodes the
images as for COCO and VOC (:mod:`fpn.data.scan`).

Every label file is read before anything is refused: a split with malformed lines raises one
:class:`~fpn.data.yolo_labels.YoloLabelError` naming the first (``labels/img3.txt:4: class 7 out of range
(names has 3)``) and how many more there are, so a user fixes a whole export in one pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fpn.data.dataset import DetectionDataset, ImageRecord, Transform
from fpn.data.images import image_size
from fpn.data.scan import readable_records
from fpn.data.validate import BoxReport, clean_boxes
from fpn.data.yolo_labels import LabelFile, YoloLabelError, label_path, read_label_file, split_images
from fpn.errors import DataError

logger = logging.getLogger("fpn.data")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _malformed(files: Sequence[LabelFile]) -> YoloLabelError | None:
    """One error for every malformed line of a split: the first, and how many more in how many files."""
    problems = [problem for labels in files for problem in labels.problems]
    if not problems:
        return None
    if len(problems) == 1:
        return YoloLabelError(problems[0])
    bad_files = sum(1 for labels in files if labels.problems)
    more = _plural(len(problems) - 1, "more malformed line")
    return YoloLabelError(f"{problems[0]} (and {more}; {_plural(bad_files, 'label file')} to fix)")


def _first(files: Sequence[LabelFile], attribute: str) -> tuple[int, str]:
    """How many lines of a kind (``zero_size``, ``duplicates``) the files hold, and where the first one is."""
    found = [(labels.path, number) for labels in files for number in getattr(labels, attribute)]
    return len(found), (f"{found[0][0]}:{found[0][1]}" if found else "")


def _report(files: Sequence[LabelFile], images: Sequence[Path], source: str) -> None:
    """Log what was dropped (a warning: it changes the data) and the negatives (information)."""
    dropped = []
    for attribute, what in (("zero_size", "box of zero size"), ("duplicates", "line repeating an earlier one")):
        count, first = _first(files, attribute)
        if count:
            noun = what if count == 1 else what.replace("box ", "boxes ").replace("line ", "lines ")
            dropped.append(f"dropped {count} {noun} (first: {first})")
    if dropped:
        logger.warning("%s: %s", source, "; ".join(dropped))
    missing = sum(1 for labels in files if not labels.exists)
    empty = sum(1 for labels in files if labels.exists and not labels.classes and not labels.problems)
    if missing == len(files):
        logger.warning(
            "%s: none of the %d images has a label file (the first would be %s): all are negatives",
            source,
            len(files),
            label_path(images[0]),
        )
    elif missing or empty:
        logger.info("%s: %d images without a label file, %d without objects: kept as negatives", source, missing, empty)


class YoloDataset(DetectionDataset):
    """A YOLO-format split: the images of ``sources`` and their label files.

    Args:
        sources: the split's image folders (searched recursively), ``.txt`` image lists or image files.
        names: the class names; class ``i`` of the label files is label ``i + 1``.
        category_ids: the category id of each class in :meth:`coco_ground_truth` (default ``1..K``).
        extra_columns: numbers after the box on every line (a pose dataset's keypoints), ignored.
        split: the split's name, for messages.
        transform, include_crowd, check_files, strict: as for :class:`~fpn.data.coco.CocoDataset`.

    Image ids are ``1..N`` in the sorted order of the image paths; ``file_name`` is relative to the folder that
    holds all the split's images (``root``).
    """

    def __init__(
        self,
        sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        names: Sequence[str],
        *,
        category_ids: Sequence[int] | None = None,
        extra_columns: int = 0,
        split: str = "",
        transform: Transform | None = None,
        include_crowd: bool = False,
        check_files: bool = True,
        strict: bool = False,
    ) -> None:
        paths = [Path(sources)] if isinstance(sources, (str, os.PathLike)) else [Path(s) for s in sources]
        names = list(names)
        source = ", ".join(str(path) for path in paths)
        images = split_images(paths)
        files = [read_label_file(label_path(image), len(names), extra_columns) for image in images]
        error = _malformed(files)
        if error is not None:
            raise error
        _report(files, images, source)
        root = Path(os.path.commonpath([str(image.parent) for image in images]))
        report = BoxReport()
        records, unreadable = [], []
        for image_id, (image, labels) in enumerate(zip(images, files, strict=True), start=1):
            file_name = image.relative_to(root).as_posix()
            try:
                height, width = image_size(image)
            except DataError as problem:
                if not check_files:
                    raise
                unreadable.append((file_name, image, str(problem)))
                continue
            records.append(self._record(image_id, file_name, image, height, width, labels, report))
        report.log(source)
        if check_files:
            key = "yolo " + " ".join(str(path.resolve()) for path in paths)
            records = readable_records(records, source, key, strict=strict, unreadable=unreadable)
        ids = list(range(1, len(names) + 1)) if category_ids is None else list(category_ids)
        super().__init__(
            records,
            names,
            ids,
            root=root,
            split=split,
            source=source,
            transform=transform,
            include_crowd=include_crowd,
            strict=strict,
        )

    @staticmethod
    def _record(
        image_id: int, file_name: str, path: Path, height: int, width: int, labels: LabelFile, report: BoxReport
    ) -> ImageRecord:
        boxes, classes, iscrowd, areas = ImageRecord.empty_annotations()
        if labels.boxes:
            scale = np.array([width, height, width, height], dtype=np.float64)
            boxes, keep = clean_boxes(np.array(labels.boxes, dtype=np.float64) * scale, width, height, report)
            classes = np.array(labels.classes, dtype=np.int64)[keep] + 1
            iscrowd = np.zeros(len(classes), dtype=bool)
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return ImageRecord(
            image_id=image_id,
            file_name=file_name,
            path=path,
            height=height,
            width=width,
            boxes=boxes,
            labels=classes,
            iscrowd=iscrowd,
            areas=areas,
        )
