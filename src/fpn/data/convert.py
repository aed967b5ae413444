"""A dataset converted between COCO, YOLO (Ultralytics) and Pascal VOC, with a dataset YAML ``fpn train`` reads.

The source is any dataset ``fpn`` reads (a dataset YAML in any of the three formats, an Ultralytics data.yaml,
a built-in name); every split it has is read as training would read it (validated, unreadable images left out
with a warning or, ``strict``, refused) and written by :mod:`fpn.data.writers` into the target layout plus
``data.yaml``.

The output is built in a hidden temporary folder beside it and renamed into place only when complete: an
interrupted or failed conversion leaves no half-written dataset (and no temporary folder). A non-empty output
folder is refused unless ``force``, which replaces it once the new one is complete; a folder holding or inside
any of the source's files is refused even then. Images are copied by default; ``link`` hard-links them where
the file system allows (same disk), which costs no space, but then an edit in place of an output image (some
tools rewrite images they think corrupt) edits the source too, which is why it is not the default.

Round trips (``tests/data/test_yolo.py``): YOLO -> COCO -> YOLO gives back every number a label file holds to
its 10th decimal (exactly, for numbers written with up to 10 decimals); COCO -> YOLO -> COCO gives back the same
images, categories (ids too, through ``category_ids``) and boxes to 2e-10 of the image's side (0.0002 px per
1,000 px), crowd objects aside (YOLO cannot hold them); VOC -> COCO -> VOC is exact; into VOC, coordinates are
rounded to 0.01 px.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from fpn.data.dataset import DetectionDataset
from fpn.data.spec import load_dataset, load_spec, resolve_data
from fpn.data.writers import TARGETS, WRITERS, Place, WrittenSplit, dataset_yaml
from fpn.errors import ConfigError, DataError, OutputError
from fpn.io import atomic_write_text, check_writable

logger = logging.getLogger("fpn.data")


@dataclass(frozen=True)
class Conversion:
    """A finished conversion: where it is, its dataset YAML, and what each split holds."""

    output: Path
    data_yaml: Path
    splits: dict[str, WrittenSplit]


def copy_image(source: Path, destination: Path) -> None:
    """Copy the bytes of an image (the source is never opened for writing)."""
    shutil.copyfile(source, destination)


def link_image(source: Path, destination: Path) -> None:
    """Hard-link an image; copy it where the file system cannot (another disk, no links)."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_output(output: Path, force: bool, datasets: dict[str, DetectionDataset], spec_path: Path) -> None:
    """Refuse, before any work, an output that is a file, not empty (without ``force``) or among the source."""
    if output.exists():
        if not output.is_dir():
            raise OutputError(f"{output}: is a file, not a folder")
        if any(output.iterdir()) and not force:
            raise OutputError(f"{output}: folder is not empty (--force replaces it)")
    check_writable(output, folder=True)
    target = output.resolve()
    sources = [spec_path, *(r.path for d in datasets.values() for r in d.records)]
    for source in sources:
        if _within(source.resolve(), target):
            raise OutputError(f"{output}: holds the source's file {source}; write the conversion elsewhere")
    for dataset in datasets.values():
        if _within(target, dataset.root.resolve()):
            raise OutputError(f"{output}: is inside the source's image folder {dataset.root}; write it elsewhere")


def _classes(datasets: dict[str, DetectionDataset]) -> tuple[list[str], list[int]]:
    """The classes every split shares (a dataset YAML has one class list)."""
    first_split, first = next(iter(datasets.items()))
    for split, dataset in datasets.items():
        if (dataset.names, dataset.category_ids) != (first.names, first.category_ids):
            raise DataError(
                f"{dataset.source}: split {split} has classes {dataset.names} but {first_split} has {first.names}"
            )
    return first.names, first.category_ids


def _publish(temporary: Path, output: Path) -> None:
    """Rename the finished folder into place; a replaced output is removed only once the new one is there."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, old)  # onto the empty folder just made, so the name is ours
    os.replace(temporary, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert(
    source: str | os.PathLike[str],
    to: str,
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    link: bool = False,
    strict: bool = False,
) -> Conversion:
    """Write every split of ``source`` in format ``to`` (coco, yolo, voc) under ``output`` (see the module)."""
    if to not in TARGETS:
        raise ConfigError(f"cannot convert to {to!r} (one of: {', '.join(TARGETS)})")
    spec = load_spec(resolve_data(source))
    datasets = {split: load_dataset(source, split, strict=strict) for split in spec.splits}
    output = Path(os.path.abspath(Path(output).expanduser()))
    _check_output(output, force, datasets, spec.path)
    names, category_ids = _classes(datasets)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    place: Place = link_image if link else copy_image
    try:
        written = {split: WRITERS[to](dataset, temporary, split, place) for split, dataset in datasets.items()}
        entries = {split: result.entry for split, result in written.items()}
        text = yaml.safe_dump(dataset_yaml(to, names, category_ids, entries), sort_keys=False, allow_unicode=True)
        atomic_write_text(text, temporary / "data.yaml")
        _publish(temporary, output)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"{output}: cannot write ({error.strerror or error})") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already once published
    left_out = sum(result.left_out for result in written.values())
    if left_out:
        logger.warning("%s: left out %d crowd or difficult objects (%s has no such flag)", source, left_out, to)
    return Conversion(output, output / "data.yaml", written)
