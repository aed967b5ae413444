"""An Ultralytics ``data.yaml`` read as Ultralytics reads it: the dataset root, each split's sources, the names.

Keys (everything else, such as Roboflow's ``roboflow:`` block or ``download:``, is ignored, as Ultralytics does):

- ``path``: the dataset root. Absent or empty: the YAML's folder. Relative: against the YAML's folder, or if
  nothing is there, against the current folder (where Ultralytics looks first; fpn prefers the YAML's folder so
  that a dataset loads the same from anywhere).
- ``train``, ``val`` (or ``validation``), ``test``: a folder of images (searched recursively), a ``.txt`` file
  listing image paths, or a list of those, relative to the root. As in Ultralytics, a relative entry starting
  with ``../`` that names nothing is tried again without it: a Roboflow export's ``train: ../train/images``
  beside ``data.yaml`` finds ``train/images``.
- ``names``: a list, or a mapping ``{0: name, 1: ...}`` whose keys are ``0..n-1``; values that are not strings
  become strings (YAML reads ``no`` as ``False``: the class is then ``"False"``, as in Ultralytics).
- ``nc``: optional; must equal the number of names if both are given. Without ``names`` the classes are
  ``class_0 .. class_{nc-1}``.
- ``kpt_shape``: ``[keypoints, values per keypoint]`` of a pose dataset: each line is then ``class cx cy w h``
  and that many numbers, of which detection reads the box.
- ``category_ids``: fpn's own, optional: the COCO category id of each class, written by ``fpn convert`` so that
  COCO -> YOLO -> COCO keeps the ids (YOLO classes are ``0..n-1``). Ultralytics ignores it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpn.errors import ConfigError

#: The splits fpn reads from an Ultralytics YAML (``validation`` is read as ``val``).
YOLO_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class YoloLayout:
    """A parsed Ultralytics YAML: the class names, their category ids, and each split's image sources."""

    root: Path
    names: list[str]
    category_ids: list[int] | None = None
    extra_columns: int = 0  # numbers after the box on each line of a pose dataset (kpt_shape)
    splits: dict[str, tuple[Path, ...]] = field(default_factory=dict)


def looks_like_ultralytics(data: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping without ``format:`` is an Ultralytics data.yaml: splits as paths, names or nc."""
    if "format" in data or not ("names" in data or "nc" in data):
        return False
    splits = [data[key] for key in ("train", "val", "validation", "test") if key in data]
    return bool(splits) and all(isinstance(value, (str, list)) or value is None for value in splits)


def _root(value: Any, yaml_path: Path) -> Path:
    if value is None or value == "":
        return yaml_path.parent
    if not isinstance(value, str):
        raise ConfigError(f"{yaml_path}: path must be a folder (a string), got {value!r}")
    root = Path(value).expanduser()
    if root.is_absolute():
        return root
    beside = yaml_path.parent / root
    return beside if beside.exists() or not root.exists() else root


def _source(value: Any, root: Path, yaml_path: Path, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{yaml_path}: {key} must be a folder or a .txt list of images, got {value!r}")
    # Paths are normalised (a/../b is b), as Ultralytics resolves them, so that file names hold no "..".
    source = Path(os.path.normpath(root / Path(value).expanduser()))
    if not source.exists() and value.startswith("../"):
        shorter = Path(os.path.normpath(root / value[3:]))  # Ultralytics' own fallback, which Roboflow relies on
        if shorter.exists():
            return shorter
    return source


def _names(data: Mapping[str, Any], yaml_path: Path) -> list[str]:
    raw, count = data.get("names"), data.get("nc")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"{yaml_path}: nc must be a positive whole number, got {count!r}")
    if raw is None:
        if count is None:
            raise ConfigError(f"{yaml_path}: needs names (or nc), the classes of the labels")
        return [f"class_{index}" for index in range(count)]
    if isinstance(raw, Mapping):
        try:
            by_index = {int(key): value for key, value in raw.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{yaml_path}: names keys must be class numbers 0..n-1, got {list(raw)}") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise ConfigError(f"{yaml_path}: names keys must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
        values = [by_index[index] for index in range(len(by_index))]
    elif isinstance(raw, list):
        values = list(raw)
    else:
        raise ConfigError(f"{yaml_path}: names must be a list or a mapping {{0: name, ...}}, got {raw!r}")
    if not values or any(value is None or isinstance(value, (list, dict)) for value in values):
        raise ConfigError(f"{yaml_path}: names must be a non-empty list of class names, got {raw!r}")
    names = [str(value) for value in values]
    if len(set(names)) != len(names):
        raise ConfigError(f"{yaml_path}: names must be unique, got {names}")
    if count is not None and count != len(names):
        raise ConfigError(f"{yaml_path}: nc is {count} but names has {len(names)}")
    return names


def _category_ids(value: Any, count: int, yaml_path: Path) -> list[int] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or len(value) != count or len(set(value)) != count:
        raise ConfigError(f"{yaml_path}: category_ids must be {count} distinct whole numbers, got {value!r}")
    return list(value)


def _extra_columns(value: Any, yaml_path: Path) -> int:
    if value is None:
        return 0
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
    if not ok:
        raise ConfigError(f"{yaml_path}: kpt_shape must be [keypoints, values per keypoint], got {value!r}")
    return value[0] * value[1]


def parse_data_yaml(data: Mapping[str, Any], yaml_path: Path) -> YoloLayout:
    """Check an Ultralytics data.yaml's mapping (its files are not opened: the reader checks those)."""
    fmt = data.get("format", "yolo")
    if fmt != "yolo":
        raise ConfigError(f"{yaml_path}: not a YOLO dataset YAML (format {fmt!r})")
    entries = dict(data)
    if "val" not in entries and "validation" in entries:
        entries["val"] = entries.pop("validation")
    names = _names(entries, yaml_path)
    root = _root(entries.get("path"), yaml_path)
    splits: dict[str, tuple[Path, ...]] = {}
    for key in YOLO_SPLITS:
        value = entries.get(key)
        if value is None or value == "" or value == []:
            continue
        values = value if isinstance(value, list) else [value]
        splits[key] = tuple(_source(v, root, yaml_path, key) for v in values)
    if not splits:
        raise ConfigError(f"{yaml_path}: no splits (expected at least one of: {', '.join(YOLO_SPLITS)})")
    return YoloLayout(
        root,
        names,
        category_ids=_category_ids(entries.get("category_ids"), len(names), yaml_path),
        extra_columns=_extra_columns(entries.get("kpt_shape"), yaml_path),
        splits=splits,
    )
