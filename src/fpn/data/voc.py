"""Pascal VOC layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt``.

Coordinates: VOC boxes are 1-based, inclusive pixel indices, so ``xmin=1, xmax=10`` covers the first ten
pixel columns. In the 0-based continuous coordinates used everywhere else in ``fpn`` (and by COCO) those
columns span ``[0, 10]``. The reader therefore maps ``(xmin, ymin, xmax, ymax)`` to
``(xmin - 1, ymin - 1, xmax, ymax)`` and :func:`write_voc` does the inverse, so a round trip is exact.

Objects marked ``<difficult>1</difficult>`` are kept but flagged (``iscrowd``): they are left out of training
targets by default and appear as ``iscrowd=1`` in :meth:`~fpn.data.dataset.DetectionDataset.coco_ground_truth`,
so evaluation neither rewards nor punishes detections of them, as in the VOC protocol.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fpn.data.dataset import DetectionDataset, ImageRecord, Transform
from fpn.data.images import image_size
from fpn.data.scan import readable_records
from fpn.data.validate import BoxReport, as_positive_int, clean_boxes
from fpn.errors import DataError

#: The 20 Pascal VOC classes, in the usual order; the default class list of :class:`VocDataset`.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _text(element: ET.Element, tag: str, source: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{source}: {where} has no <{tag}>")
    return child.text.strip()


def _number(element: ET.Element, tag: str, source: str, where: str) -> float:
    text = _text(element, tag, source, where)
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{source}: {where} <{tag}> must be a number, got {text!r}") from None
    if not np.isfinite(value):
        raise DataError(f"{source}: {where} <{tag}> must be finite, got {text!r}")
    return value


def read_split(path: Path) -> list[str]:
    """Image ids listed in an ``ImageSets/Main/<split>.txt`` file (first token of each non-empty line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such split file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise DataError(f"{path}: the image list is empty")
    return ids


class _UnreadableHeader(DataError):
    """An image whose size had to come from its header, which cannot be read: reported with the scan's findings."""

    def __init__(self, path: Path, error: DataError) -> None:
        super().__init__(str(error))
        self.path = path


def _header_size(path: Path, check_files: bool) -> tuple[int, int]:
    """The image's ``(height, width)`` from its header; while checking files, an unreadable one is left out."""
    try:
        return image_size(path)
    except DataError as error:
        if not check_files:
            raise
        raise _UnreadableHeader(path, error) from None


class VocDataset(DetectionDataset):
    """A Pascal VOC-layout dataset.

    Args:
        root: the folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets`` (e.g. ``VOCdevkit/VOC2007``).
        split: the name of the split file ``ImageSets/Main/<split>.txt``.
        names: class names (label ``i + 1`` is ``names[i]``; category ids are ``1..K``); the 20 VOC classes
            by default. An object of a class not in the list raises :class:`~fpn.errors.DataError`.
        transform: optional augmentation, see :mod:`fpn.data.augment`.
        include_crowd: keep ``difficult`` objects in the training targets (flagged by ``iscrowd``).
        check_files: check up front that every image file exists and decodes (see :mod:`fpn.data.scan`); an
            unreadable one is left out with a warning.
        strict: an unreadable image raises :class:`~fpn.errors.DataError`, up front or when loaded, instead of
            being left out or skipped.

    Image ids are ``1..N`` in split-file order (left-out images keep their numbers).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        names: Sequence[str] | None = None,
        *,
        transform: Transform | None = None,
        include_crowd: bool = False,
        check_files: bool = True,
        strict: bool = False,
    ) -> None:
        root = Path(root)
        names = list(VOC_CLASSES if names is None else names)
        if not names or len(set(names)) != len(names):
            raise DataError(f"{root}: class names must be non-empty and unique, got {names}")
        label_of = {name: label for label, name in enumerate(names, start=1)}
        source = f"{root} ({split})"
        report = BoxReport()
        records, unreadable = [], []
        for number, stem in enumerate(read_split(root / "ImageSets" / "Main" / f"{split}.txt"), start=1):
            try:
                records.append(self._read(root, stem, number, label_of, report, check_files))
            except _UnreadableHeader as problem:
                unreadable.append((problem.path.name, problem.path, str(problem)))
        report.log(source)
        if check_files:
            key = f"voc {root.resolve()} {split}"
            records = readable_records(records, source, key, strict=strict, unreadable=unreadable)
        super().__init__(
            records,
            names,
            list(range(1, len(names) + 1)),
            root=root / "JPEGImages",
            split=split,
            source=source,
            transform=transform,
            include_crowd=include_crowd,
            strict=strict,
        )

    @staticmethod
    def _read(
        root: Path, stem: str, image_id: int, label_of: dict[str, int], report: BoxReport, check_files: bool
    ) -> ImageRecord:
        xml_path = root / "Annotations" / f"{stem}.xml"
        source = str(xml_path)
        try:
            tree = ET.parse(xml_path)
        except FileNotFoundError:
            raise DataError(f"{xml_path}: no such annotation file") from None
        except ET.ParseError as error:
            raise DataError(f"{xml_path}: malformed XML ({error})") from None
        except OSError as error:
            raise DataError(f"{xml_path}: cannot read ({error.strerror or error})") from None
        annotation = tree.getroot()

        # The image is <id>.jpg by convention; fall back to the XML's <filename> for tools that use other
        # extensions (in the id's folder, for ids with folders: a/b). A missing file is reported under the
        # conventional name.
        file_name = f"{stem}.jpg"
        listed = annotation.findtext("filename")
        if not (root / "JPEGImages" / file_name).is_file() and listed and listed.strip():
            candidate = (Path(stem).parent / Path(listed.strip()).name).as_posix()
            if (root / "JPEGImages" / candidate).is_file():
                file_name = candidate
        image_path = root / "JPEGImages" / file_name
        if check_files and not image_path.is_file():
            raise DataError(f"{image_path}: no such image file (referenced by {xml_path})")

        size = annotation.find("size")
        if size is not None and size.findtext("width", "0").strip() not in ("", "0"):
            width = as_positive_int(_number(size, "width", source, "<size>"), source, "<size> width")
            height = as_positive_int(_number(size, "height", source, "<size>"), source, "<size> height")
        else:
            # Some tools leave <size> empty or zero; the header of the image has the truth.
            height, width = _header_size(image_path, check_files)

        rows, labels, difficult = [], [], []
        for index, obj in enumerate(annotation.findall("object")):
            where = f"object {index + 1}"
            name = _text(obj, "name", source, where)
            if name not in label_of:
                raise DataError(f"{source}: {where} has unknown class {name!r} (known: {', '.join(label_of)})")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise DataError(f"{source}: {where} has no <bndbox>")
            xmin, ymin, xmax, ymax = (_number(bndbox, tag, source, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
            rows.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # 1-based inclusive -> 0-based continuous
            labels.append(label_of[name])
            flag = obj.findtext("difficult", "0").strip()
            difficult.append(flag not in ("", "0", "false", "False"))

        boxes, label_array, iscrowd, areas = ImageRecord.empty_annotations()
        if rows:
            boxes, keep = clean_boxes(np.array(rows, dtype=np.float64), width, height, report)
            label_array = np.array(labels, dtype=np.int64)[keep]
            iscrowd = np.array(difficult, dtype=bool)[keep]
            areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float64)
        return ImageRecord(
            image_id=image_id,
            file_name=file_name,
            path=image_path,
            height=height,
            width=width,
            boxes=boxes,
            labels=label_array,
            iscrowd=iscrowd,
            areas=areas,
        )


@dataclass
class VocSample:
    """One image for :func:`write_voc`.

    ``image`` is a Pillow image (saved as JPEG, quality 95) or the path of an existing image (copied, keeping
    its suffix: ``<stem>.png`` is found through the XML's ``<filename>``). ``stem`` may hold folders (``a/b``).
    ``boxes`` are xyxy in 0-based continuous pixel coordinates, ``labels`` in ``1..K``.
    """

    stem: str
    image: Image.Image | str | os.PathLike[str]
    boxes: np.ndarray | Sequence[Sequence[float]]
    labels: np.ndarray | Sequence[int]
    difficult: np.ndarray | Sequence[bool] | None = None


def _coordinate(value: float) -> str:
    # VOC files hold integers; keep fractions (rounded to 0.01 px) rather than silently moving a box.
    value = round(float(value), 2)
    return str(int(value)) if value == int(value) else f"{value:g}"


def write_voc(
    root: str | os.PathLike[str],
    split: str,
    samples: Iterable[VocSample],
    names: Sequence[str],
    *,
    place: Callable[[Path, Path], object] = shutil.copyfile,
) -> Path:
    """Write samples in the VOC layout under ``root`` and list them in ``ImageSets/Main/<split>.txt``.

    The inverse of :class:`VocDataset`: box ``(x1, y1, x2, y2)`` is written as
    ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2``. ``place(source, destination)`` puts an image
    given by path into ``JPEGImages`` (a copy by default; ``fpn convert --link`` links). Returns ``root``.
    """
    root = Path(root)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    stems = []
    for sample in samples:
        suffix = ".jpg" if isinstance(sample.image, Image.Image) else Path(sample.image).suffix
        image_path = root / "JPEGImages" / f"{sample.stem}{suffix}"
        xml_path = root / "Annotations" / f"{sample.stem}.xml"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(sample.image, Image.Image):
            sample.image.convert("RGB").save(image_path, quality=95)
            width, height = sample.image.size
        else:
            place(Path(sample.image), image_path)
            height, width = image_size(image_path)
        annotation = ET.Element("annotation")
        ET.SubElement(annotation, "folder").text = root.name
        ET.SubElement(annotation, "filename").text = image_path.name
        size = ET.SubElement(annotation, "size")
        ET.SubElement(size, "width").text = str(width)
        ET.SubElement(size, "height").text = str(height)
        ET.SubElement(size, "depth").text = "3"
        boxes = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(sample.labels, dtype=np.int64).reshape(-1)
        difficult = np.zeros(len(labels), bool) if sample.difficult is None else np.asarray(sample.difficult, bool)
        for box, label, hard in zip(boxes, labels, difficult, strict=True):
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = names[int(label) - 1]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = str(int(bool(hard)))
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(
                ("xmin", "ymin", "xmax", "ymax"), (box[0] + 1, box[1] + 1, box[2], box[3]), strict=True
            ):
                ET.SubElement(bndbox, tag).text = _coordinate(value)
        tree = ET.ElementTree(annotation)
        ET.indent(tree)
        tree.write(xml_path, encoding="utf-8", xml_declaration=False)
        stems.append(sample.stem)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems), encoding="utf-8")
    return root
