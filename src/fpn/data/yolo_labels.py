"""YOLO label files: where each image's labels are, what a line may hold, and how fpn writes one.

A label file ``labels/.../<stem>.txt`` belongs to the image ``images/.../<stem>.<ext>``: the last ``images``
folder of the image's path becomes ``labels`` and the suffix ``.txt`` (Ultralytics' rule; an image with no
``images`` folder in its path has its labels beside it). Each non-blank line is one object:

- ``class x_center y_center width height``: normalised to the image's width and height (0..1);
- ``class x1 y1 x2 y2 x3 y3 ...`` (three or more points): a segmentation polygon or an oriented box, read as
  its bounding box, as Ultralytics' detection training does;
- in a pose dataset (``kpt_shape`` in the YAML), the box and then the keypoints, which are ignored.

``class`` is a whole number ``0..n-1`` (``3`` or ``3.0``). Coordinates may stray up to 0.01 outside 0..1 (what
Ultralytics accepts, and what exporters' rounding produces); the box is then clipped to the image. A missing or
empty label file is an image without objects (a negative). A box of zero width or height is dropped; so is a
line repeating an earlier line of its file (the same object twice would count one detection as a miss in
evaluation; Ultralytics drops them too). Both are counted in one warning per split, naming the first.
Anything else wrong with a line is a :class:`YoloLabelError` naming the file and the line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpn.data.images import IMAGE_EXTENSIONS, is_image_file
from fpn.errors import DataError

#: How far outside 0..1 a coordinate may be and still be read (then clipped): Ultralytics' own 1%.
TOLERANCE = 0.01
#: Decimal places of the numbers :func:`format_line` writes: 1e-10 of the image's side (1e-7 px at 1,000 px),
#: so that a value written with up to 10 decimals comes back as it was (see :mod:`fpn.data.convert`).
DECIMALS = 10
#: A box edge this close outside 0..1 is put on the border without a word: that is the rounding of printed
#: numbers (``cx + w / 2`` of a box touching the border), not a box sticking out (1e-6 of 20,000 px is 0.02 px).
ROUNDING = 1e-6
_BOX_FIELDS = ("x_center", "y_center", "width", "height")


class YoloLabelError(DataError):
    """A malformed line of a YOLO label file (the message names the file and the line)."""


def label_path(image: Path) -> Path:
    """The label file of ``image``: its last ``images`` folder replaced by ``labels``, the suffix by ``.txt``."""
    parts = image.parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            return Path(*parts[:index], "labels", *parts[index + 1 :]).with_suffix(".txt")
    return image.with_suffix(".txt")


def _folder_images(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, hidden files and folders left out (as Ultralytics' glob does)."""
    return [
        path
        for path in folder.rglob("*")
        if is_image_file(path)
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    ]


def _listed_images(list_file: Path) -> list[Path]:
    """The images a ``.txt`` list names, one per line; relative lines (``./images/a.jpg``) are from its folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{list_file}: cannot read the image list ({error})") from None
    found = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or not is_image_file(text):  # Ultralytics keeps only lines with an image suffix
            continue
        path = Path(text).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else list_file.parent / path))
        if not path.is_file():
            raise DataError(f"{list_file}:{number}: no such image file {text}")
        found.append(path)
    return found


def split_images(sources: Sequence[Path]) -> list[Path]:
    """Every image of a split's sources (folders, ``.txt`` lists, image files), sorted, without repeats."""
    found: list[Path] = []
    for source in sources:
        if source.is_dir():
            found += _folder_images(source)
        elif source.is_file():
            found += [source] if is_image_file(source) else _listed_images(source)
        else:
            raise DataError(f"{source}: no such image folder or image list")
    if not found:
        where = ", ".join(str(s) for s in sources)
        raise DataError(f"{where}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(dict.fromkeys(found), key=str)


@dataclass
class LabelFile:
    """What one label file holds: its objects (class, normalised xyxy) and what was wrong or dropped."""

    path: Path
    exists: bool = True
    classes: list[int] = field(default_factory=list)
    boxes: list[tuple[float, ...]] = field(default_factory=list)  # x1, y1, x2, y2
    problems: list[str] = field(default_factory=list)  # "file:line: problem", one per malformed line
    zero_size: list[int] = field(default_factory=list)  # line numbers of boxes of zero width or height
    duplicates: list[int] = field(default_factory=list)  # line numbers repeating an earlier line


def _class(text: str, num_classes: int) -> int | str:
    """The class of a line, or what is wrong with it."""
    try:
        value = float(text)
    except ValueError:
        return f"class {text!r} is not a number"
    if not math.isfinite(value) or value != int(value):
        return f"class {text!r} is not a whole number"
    if value < 0:
        return f"class {int(value)} is negative"
    if value >= num_classes:
        return f"class {int(value)} out of range (names has {num_classes})"
    return int(value)


def _numbers(fields: Sequence[str], names: Sequence[str]) -> list[float] | str:
    """The coordinates of a line (each checked to lie in 0..1, give or take the tolerance), or what is wrong."""
    values = []
    for index, text in enumerate(fields):
        name = names[index] if index < len(names) else f"field {index + 2}"  # a keypoint's value
        try:
            value = float(text)
        except ValueError:
            return f"{name} {text!r} is not a number"
        if not math.isfinite(value):
            return f"{name} {text!r} is not a finite number"
        if index < len(names) and not -TOLERANCE <= value <= 1 + TOLERANCE:
            return f"{name} {text} is outside 0..1 (coordinates are normalised to the image size)"
        values.append(value)
    return values


def _shape(count: int, extra_columns: int) -> tuple[str, ...] | str:
    """The names of a line's numbers after the class (those range-checked), or why ``count`` fields do not fit."""
    if extra_columns:
        if count == 5 + extra_columns:
            return _BOX_FIELDS
        return f"{count} fields; expected {5 + extra_columns} (class, box and keypoints, as kpt_shape says)"
    if count == 5:
        return _BOX_FIELDS
    if count >= 7 and count % 2 == 1:
        return tuple(f"{axis}{point}" for point in range(1, count // 2 + 1) for axis in "xy")
    polygon = "a polygon (class x1 y1 x2 y2 x3 y3 ...)"
    return f"{count} fields; expected 5 (class x_center y_center width height) or {polygon}"


def read_label_file(path: Path, num_classes: int, extra_columns: int = 0) -> LabelFile:
    """Parse one label file (a missing one is an image without objects)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LabelFile(path, exists=False)
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a label file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    labels = LabelFile(path)
    seen: set[tuple[int, tuple[float, ...]]] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        shape = _shape(len(fields), extra_columns)
        label = _class(fields[0], num_classes) if not isinstance(shape, str) else shape
        values = _numbers(fields[1:], shape) if not isinstance(shape, str) else shape
        problem = next((p for p in (shape, label, values) if isinstance(p, str)), None)
        if problem is not None:
            labels.problems.append(f"{path}:{number}: {problem}")
            continue
        assert isinstance(label, int) and isinstance(values, list)
        key = (label, tuple(values))
        if key in seen:
            labels.duplicates.append(number)
            continue
        seen.add(key)
        if len(fields) == 5 or extra_columns:
            cx, cy, w, h = values[:4]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        box = tuple(min(max(v, 0.0), 1.0) if -ROUNDING <= v <= 1 + ROUNDING else v for v in box)
        if box[2] <= box[0] or box[3] <= box[1]:
            labels.zero_size.append(number)
            continue
        labels.classes.append(label)
        labels.boxes.append(box)
    return labels


def _number(value: float) -> str:
    """``value`` with :data:`DECIMALS` decimals, trailing zeros dropped (``0.5``, ``1``, ``0.0123456789``)."""
    text = f"{value:.{DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_lines(boxes: np.ndarray, classes: Sequence[int], width: int, height: int) -> str:
    """The label file of an image: one ``class x_center y_center width height`` line per xyxy pixel box."""
    lines = []
    for (x1, y1, x2, y2), label in zip(np.asarray(boxes, np.float64).reshape(-1, 4), classes, strict=True):
        values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        lines.append(" ".join([str(int(label)), *(_number(v) for v in values)]) + "\n")
    return "".join(lines)
