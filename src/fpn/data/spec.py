"""The dataset YAML: which format, which classes, and where each split's files are.

COCO format::

    format: coco
    names: [tree]                                   # optional: read from the categories if left out
    train: {annotations: train.json, images: train/}
    val:   {annotations: val.json,   images: val/}

Pascal VOC layout::

    format: voc
    names: [aeroplane, bicycle, ...]                # optional: the 20 VOC classes if left out
    train: {root: VOCdevkit/VOC2007, split: trainval}
    val:   {root: VOCdevkit/VOC2007, split: test}  # split defaults to the key (train, val, test)

YOLO (Ultralytics) format: an Ultralytics ``data.yaml``, as Ultralytics, Roboflow, CVAT and Label Studio write
it, is read unchanged. It is recognised by its keys (no ``format:``; ``train``/``val``/``test`` as paths, ``names``
or ``nc``), or say ``format: yolo``::

    path: /data/people           # optional: the dataset root (default: the YAML's folder)
    train: images/train          # a folder, a .txt list of images, or a list of those, relative to path
    val: images/val              # (a Roboflow export's ../valid/images finds valid/images beside the YAML)
    names: {0: person, 1: car}   # or a list; nc optional, checked against names if given

Each image ``.../images/.../a.jpg`` has its labels in ``.../labels/.../a.txt``, one ``class x_center y_center
width height`` line per object, normalised to 0..1; a missing or empty file is an image without objects. The
YAML's rules are in :mod:`fpn.data.yolo_spec`, the label lines' in :mod:`fpn.data.yolo_labels`; unknown keys
of an Ultralytics YAML are ignored, as Ultralytics ignores them.

Relative paths are relative to the YAML file's folder. The splits are ``train``, ``val`` and ``test``; any
other key, a missing key or a missing split raises :class:`~fpn.errors.ConfigError` naming the file and key.

Instead of a YAML path, :func:`load_dataset` accepts the name of a built-in set: ``synthetic`` (see
:mod:`fpn.data.synthetic`) or ``synthetic-large`` (large scenes, small objects: :mod:`fpn.data.large_scenes`),
generated on first use into the cache folder (``$FPN_CACHE`` or ``~/.cache/fpn``).

Unreadable images are left out with a warning (see :mod:`fpn.data.scan`) unless loading is strict: pass
``strict=True``, or wrap code that loads datasets itself (such as :func:`fpn.engine.train.train`) in
:func:`strict_loading`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fpn.data.coco import CocoDataset, parse_categories, read_json
from fpn.data.dataset import DetectionDataset, Transform
from fpn.data.large_scenes import make_large_scenes
from fpn.data.scan import cache_dir
from fpn.data.synthetic import make_synthetic
from fpn.data.voc import VOC_CLASSES, VocDataset
from fpn.data.yolo import YoloDataset
from fpn.data.yolo_spec import looks_like_ultralytics, parse_data_yaml
from fpn.errors import ConfigError, DataError

FORMATS = ("coco", "voc", "yolo")
SPLITS = ("train", "val", "test")
#: Built-in data sets: name -> function(cache folder) -> path of its data.yaml.
BUILTIN = {
    "synthetic": lambda cache: make_synthetic(cache / "synthetic"),
    "synthetic-large": lambda cache: make_large_scenes(cache / "synthetic-large"),
}

_TOP_KEYS = ("format", "names", *SPLITS)
_SPLIT_KEYS = {"coco": ("annotations", "images"), "voc": ("root", "split")}
_REQUIRED_SPLIT_KEYS = {"coco": ("annotations", "images"), "voc": ("root",)}


# What load_dataset does when not told: a context variable, so that strictness reaches the datasets that code
# such as the training loop loads itself, without a parameter through every layer between.
_STRICT: ContextVar[bool] = ContextVar("fpn_strict_loading", default=False)


@contextlib.contextmanager
def strict_loading(strict: bool = True) -> Iterator[None]:
    """Within the block, :func:`load_dataset` without a ``strict`` argument loads strictly (or not)."""
    token = _STRICT.set(strict)
    try:
        yield
    finally:
        _STRICT.reset(token)


@dataclass(frozen=True)
class SplitSpec:
    """Where one split's files are (absolute paths). COCO uses ``annotations`` and ``images``; VOC uses
    ``root`` and ``split``; YOLO ``sources`` (image folders and image lists)."""

    name: str
    annotations: Path | None = None
    images: Path | None = None
    root: Path | None = None
    split: str | None = None
    sources: tuple[Path, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset YAML."""

    path: Path
    format: str
    names: list[str] | None
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    category_ids: list[int] | None = None  # YOLO only: the classes' COCO ids, if the YAML keeps them
    extra_columns: int = 0  # YOLO only: keypoint numbers after each label line's box (kpt_shape)

    def split(self, name: str) -> SplitSpec:
        """The split called ``name``, or a ConfigError naming the file and the splits it has."""
        if name not in self.splits:
            has = ", ".join(self.splits) or "none"
            raise ConfigError(f"{self.path}: no split {name!r} (has: {has})")
        return self.splits[name]


def _path(value: Any, spec_path: Path, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{spec_path}: {key} must be a path (a non-empty string), got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else spec_path.parent / path


def _names(value: Any, spec_path: Path) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(n, str) and n.strip() for n in value):
        raise ConfigError(f"{spec_path}: names must be a non-empty list of class names, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{spec_path}: names must be unique, got {value!r}")
    return list(value)


def load_spec(path: str | os.PathLike[str]) -> DatasetSpec:
    """Parse and check a dataset YAML (its files are not opened; the readers check those)."""
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such dataset file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a dataset YAML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read ({error})") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping with format, names and splits ({', '.join(SPLITS)})")
    if data.get("format") == "yolo" or looks_like_ultralytics(data):
        layout = parse_data_yaml(data, path)
        splits = {name: SplitSpec(name, sources=sources) for name, sources in layout.splits.items()}
        return DatasetSpec(path, "yolo", layout.names, splits, layout.category_ids, layout.extra_columns)
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (expected: {', '.join(_TOP_KEYS)})")
    if "format" not in data:
        raise ConfigError(
            f"{path}: missing key 'format' (one of: {', '.join(FORMATS)}; an Ultralytics data.yaml needs train "
            "or val, and names or nc)"
        )
    fmt = data["format"]
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    names = _names(data["names"], path) if data.get("names") is not None else None

    splits = {}
    for name in SPLITS:
        if name not in data:
            continue
        entry = data[name]
        if not isinstance(entry, dict):
            keys = ", ".join(_SPLIT_KEYS[fmt])
            raise ConfigError(f"{path}: {name} must be a mapping with {keys}, got {entry!r}")
        for key in entry:
            if key not in _SPLIT_KEYS[fmt]:
                raise ConfigError(f"{path}: unknown key '{name}.{key}' (expected: {', '.join(_SPLIT_KEYS[fmt])})")
        for key in _REQUIRED_SPLIT_KEYS[fmt]:
            if key not in entry:
                raise ConfigError(f"{path}: missing key '{name}.{key}'")
        if fmt == "coco":
            splits[name] = SplitSpec(
                name,
                annotations=_path(entry["annotations"], path, f"{name}.annotations"),
                images=_path(entry["images"], path, f"{name}.images"),
            )
        else:
            voc_split = entry.get("split", name)
            if not isinstance(voc_split, str) or not voc_split.strip():
                raise ConfigError(f"{path}: {name}.split must be a split file name, got {voc_split!r}")
            splits[name] = SplitSpec(name, root=_path(entry["root"], path, f"{name}.root"), split=voc_split)
    if not splits:
        raise ConfigError(f"{path}: no splits (expected at least one of: {', '.join(SPLITS)})")
    return DatasetSpec(path=path, format=fmt, names=names, splits=splits)


def resolve_data(data: str | os.PathLike[str]) -> Path:
    """The YAML path for ``data``: a built-in name is generated (or found) in the cache, a path is checked."""
    text = os.fspath(data)
    if text in BUILTIN:
        return BUILTIN[text](cache_dir())
    path = Path(text).expanduser()
    if not path.is_file():
        builtin = ", ".join(BUILTIN)
        raise ConfigError(f"{text}: no such dataset YAML file, and not a built-in data set ({builtin})")
    return path


def load_dataset(
    data: str | os.PathLike[str],
    split: str,
    *,
    transform: Transform | None = None,
    include_crowd: bool = False,
    check_files: bool = True,
    strict: bool | None = None,
) -> DetectionDataset:
    """Open split ``split`` of the dataset described by ``data`` (a YAML path or a built-in name).

    ``strict``: an unreadable image raises instead of being left out or skipped; ``None`` follows the
    enclosing :func:`strict_loading` block (not strict outside any).
    """
    strict = _STRICT.get() if strict is None else strict
    spec = load_spec(resolve_data(data))
    entry = spec.split(split)
    if spec.format == "coco":
        assert entry.annotations is not None and entry.images is not None
        return CocoDataset(
            entry.annotations,
            entry.images,
            names=spec.names,
            split=split,
            transform=transform,
            include_crowd=include_crowd,
            check_files=check_files,
            strict=strict,
        )
    if spec.format == "yolo":
        assert spec.names is not None
        return YoloDataset(
            entry.sources,
            spec.names,
            category_ids=spec.category_ids,
            extra_columns=spec.extra_columns,
            split=split,
            transform=transform,
            include_crowd=include_crowd,
            check_files=check_files,
            strict=strict,
        )
    assert entry.root is not None and entry.split is not None
    return VocDataset(
        entry.root,
        entry.split,
        spec.names,
        transform=transform,
        include_crowd=include_crowd,
        check_files=check_files,
        strict=strict,
    )


def dataset_names(data: str | os.PathLike[str]) -> list[str]:
    """The class names of a dataset without reading its images (from the YAML, else from the annotations)."""
    spec = load_spec(resolve_data(data))
    if spec.names is not None:
        return spec.names
    if spec.format == "voc":
        return list(VOC_CLASSES)
    first = next(iter(spec.splits.values()))
    assert first.annotations is not None
    data_dict = read_json(first.annotations)
    if not isinstance(data_dict, dict):
        raise DataError(f"{first.annotations}: must hold a JSON object with images, annotations and categories")
    return parse_categories(data_dict, str(first.annotations))[0]
