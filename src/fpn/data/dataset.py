"""The contract every detection dataset in ``fpn`` follows, whatever its file format.

A dataset is a list of :class:`ImageRecord` (file, size, boxes, labels) read and checked once, up front, by a
format reader (:mod:`fpn.data.coco`, :mod:`fpn.data.voc`), which also leaves out images that do not decode
(:mod:`fpn.data.scan`). Items are loaded lazily; one that fails to load later is skipped with a warning unless
the dataset is ``strict`` (see :meth:`DetectionDataset.load_readable`):

``dataset[i] -> (image, target)`` with

- ``image``: float32 tensor ``[3, H, W]``, RGB, values in 0..1, EXIF orientation applied;
- ``target``: a dict with

  - ``boxes``: float32 ``[N, 4]``, ``(x1, y1, x2, y2)`` in pixels of the loaded image, 0-based continuous
    coordinates (a box covering the whole image is ``(0, 0, W, H)``);
  - ``labels``: int64 ``[N]`` in ``1..K``; label ``i + 1`` is ``names[i]``, label 0 is reserved for background;
  - ``iscrowd``: bool ``[N]``, true for COCO crowd regions and VOC ``difficult`` objects; these are left out of
    the targets unless the dataset was built with ``include_crowd=True``;
  - ``image_id``: int, the id used in :meth:`DetectionDataset.coco_ground_truth`;
  - ``file_name``: str, the image's file name relative to the images folder;
  - ``orig_size``: ``(H, W)`` of the image as loaded, before any transform.

Evaluation does not use the targets but :meth:`DetectionDataset.coco_ground_truth`, a COCO-format dict in the
dataset's original category ids that pycocotools can evaluate against, crowd and difficult objects included
(as ``iscrowd=1``, so that detections on them are neither rewarded nor punished).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fpn.data.images import open_image, pil_to_tensor
from fpn.errors import DataError

#: Item index -> the ``(x0, y0, x1, y1)`` part of its image to load (see :meth:`DetectionDataset.load_image`).
Region = Callable[[int], tuple[int, int, int, int]]

logger = logging.getLogger("fpn.data")

#: A target dict as described in the module docstring.
Target = dict[str, Any]
#: A transform takes and returns ``(image, target)``; see :mod:`fpn.data.augment`.
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


@dataclass(frozen=True)
class ImageRecord:
    """One image and its (already checked) annotations.

    ``boxes`` are xyxy pixels in the loaded image, clipped to it and of positive size, in float64: the values
    the annotation file gives, exactly (a conversion writes them back unchanged; targets are float32). ``areas`` is what
    COCO evaluation uses to put an object in the small/medium/large bucket: the annotation's own ``area``
    where the file gives one (a segmentation area, for COCO), the box area otherwise.
    """

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # float64 [N, 4]
    labels: np.ndarray  # int64 [N], 1..K
    iscrowd: np.ndarray  # bool [N]
    areas: np.ndarray  # float64 [N]

    @staticmethod
    def empty_annotations() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Zero-length ``boxes, labels, iscrowd, areas`` arrays for an image without objects."""
        return (
            np.zeros((0, 4), np.float64),
            np.zeros((0,), np.int64),
            np.zeros((0,), bool),
            np.zeros((0,), np.float64),
        )


def size_mismatch(record: ImageRecord, height: int, width: int, source: str) -> DataError | None:
    """The error for an image that loads at another size than its annotations give, else ``None``.

    Boxes are in the annotated size's pixels, so such an image would be trained on with misplaced boxes.
    """
    if (height, width) == (record.height, record.width):
        return None
    return DataError(
        f"{record.path}: image is {width}x{height} pixels but {source} says {record.width}x{record.height}"
    )


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """DataLoader ``collate_fn``: images of different sizes cannot be stacked, so return two lists."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


class DetectionDataset(Dataset):
    """Base class of the format readers; holds the records and implements the item and evaluation contract.

    Args:
        records: one per image, already checked.
        names: class names; label ``i + 1`` is ``names[i]``.
        category_ids: the original category id of each label (COCO ids; ``1..K`` for VOC).
        root: the folder the images are read from.
        split: the split's name (``"train"``, ``"val"``, ...), for messages.
        source: the annotation file or folder the records came from, for messages.
        transform: optional ``(image, target) -> (image, target)`` applied to every item (augmentation).
        include_crowd: keep crowd / difficult objects in the targets (flagged by ``iscrowd``).
        strict: an image that cannot be loaded raises :class:`~fpn.errors.DataError`; by default it is skipped
            with a warning and the next readable item is returned instead (see :meth:`__getitem__`).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        names: Sequence[str],
        category_ids: Sequence[int],
        *,
        root: Path,
        split: str,
        source: str,
        transform: Transform | None = None,
        include_crowd: bool = False,
        strict: bool = False,
    ) -> None:
        if len(names) != len(category_ids):
            raise DataError(f"{source}: {len(names)} class names but {len(category_ids)} category ids")
        if len(set(category_ids)) != len(category_ids):
            raise DataError(f"{source}: duplicate category ids {list(category_ids)}")
        self.records: list[ImageRecord] = list(records)
        self.names: list[str] = list(names)
        self.category_ids: list[int] = [int(c) for c in category_ids]
        self.root = Path(root)
        self.split = split
        self.source = source
        self.transform = transform
        self.include_crowd = include_crowd
        self.strict = strict
        self._skipped: set[Path] = set()  # files already warned about, in this process

    # --- sizes and label mapping -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        """``K``, the number of object classes (background not counted)."""
        return len(self.names)

    def label_to_category_id(self, label: int) -> int:
        """The original category id of a label in ``1..K``."""
        return self.category_ids[int(label) - 1]

    def category_id_to_label(self, category_id: int) -> int:
        """The label in ``1..K`` of an original category id."""
        return self.category_ids.index(int(category_id)) + 1

    # --- items -------------------------------------------------------------------------------------------

    def target(self, index: int) -> Target:
        """The target of item ``index`` without loading the image (no transform applied)."""
        record = self.records[index]
        keep = slice(None) if self.include_crowd else ~record.iscrowd
        return {
            "boxes": torch.from_numpy(record.boxes[keep].astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(record.labels[keep].astype(np.int64)),
            "iscrowd": torch.from_numpy(record.iscrowd[keep].astype(bool)),
            "image_id": int(record.image_id),
            "file_name": record.file_name,
            "orig_size": (int(record.height), int(record.width)),
        }

    def load_image(self, index: int, region: Region | None = None) -> torch.Tensor:
        """Load the image of item ``index``, checking that its size is the one the annotations assume.

        ``region``, if given, returns the ``(x0, y0, x1, y1)`` part of the image to keep for item ``index``;
        only that part becomes a float tensor (a tile of a 20,000 px scene: the decoded scene stays uint8).
        """
        record = self.records[index]
        picture = open_image(record.path)
        error = size_mismatch(record, picture.height, picture.width, self.source)
        if error is not None:
            raise error
        if region is not None:
            picture = picture.crop(region(index))
        return pil_to_tensor(picture)

    def load_readable(self, index: int, region: Region | None = None) -> tuple[torch.Tensor, int]:
        """The image of item ``index``, or if it cannot be loaded that of the next item that can, and its index.

        ``region``: as :meth:`load_image`'s, called with the index of the item actually loaded.

        The scan leaves out images that are unreadable when the dataset is built; one that breaks later
        (deleted or overwritten during a run) should cost one image, not the run, and without ``strict`` it is
        skipped with a warning naming it. Taking the next item keeps the substitute the same on every run.
        """
        count = len(self.records)
        if not -count <= index < count:
            raise IndexError(f"{self.source}: item {index} of {count}")  # ends iteration, as for any sequence
        for step in range(count):
            candidate = (index + step) % count
            try:
                return self.load_image(candidate, region), candidate
            except DataError as error:
                if self.strict:
                    raise
                self._warn_skipped(candidate, error)
        raise DataError(f"{self.source}: none of its {count} images can be loaded any more")

    def _warn_skipped(self, index: int, error: DataError) -> None:
        """Warn once per file and process: every epoch reaches the same broken file again."""
        path = self.records[index].path
        if path not in self._skipped:
            self._skipped.add(path)
            logger.warning("%s; skipped, the next readable image is used instead", error)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, index = self.load_readable(index)
        target = self.target(index)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    collate = staticmethod(collate)

    def subset(self, indices: Sequence[int]) -> DetectionDataset:
        """A dataset of the given items only (same classes, transform and crowd handling).

        Its :meth:`coco_ground_truth` covers only these images, so a subset can be evaluated on its own.
        """
        subset = object.__new__(type(self))
        subset.__dict__.update(self.__dict__)
        subset.records = [self.records[int(i)] for i in indices]
        return subset

    # --- evaluation --------------------------------------------------------------------------------------

    def coco_ground_truth(self) -> dict[str, Any]:
        """The annotations as a COCO-format dict, in original category ids, for pycocotools.

        Use it as ``coco = COCO(); coco.dataset = gt; coco.createIndex()``. Annotation ids start at 1
        because COCOeval uses 0 to mean "unmatched".
        """
        images = []
        annotations = []
        for record in self.records:
            images.append(
                {
                    "id": int(record.image_id),
                    "file_name": record.file_name,
                    "width": record.width,
                    "height": record.height,
                }
            )
            for box, label, crowd, area in zip(record.boxes, record.labels, record.iscrowd, record.areas, strict=True):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(record.image_id),
                        "category_id": self.label_to_category_id(int(label)),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(area),
                        "iscrowd": int(bool(crowd)),
                    }
                )
        categories = [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.names, strict=True)]
        info = {"description": f"{self.source} ({self.split})"}
        return {"info": info, "images": images, "annotations": annotations, "categories": categories}

    def num_objects(self) -> int:
        """Total number of annotated objects, crowd / difficult ones included."""
        return sum(len(r.labels) for r in self.records)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, images={len(self)}, "
            f"objects={self.num_objects()}, classes={self.num_classes})"
        )
