"""Run a detector on image files: the library side of ``fpn detect``.

``fpn detect`` writes one JSON object (:func:`results_json`), every input accounted for::

    {"images": [{"id": 1, "file_name": "a/img.png", "height": 480, "width": 640, "detections": 2}, ...],
     "detections": [{"image_id": 1, "file_name": "a/img.png", "bbox": [x, y, w, h], "score": 0.93,
                     "category_id": 17, "category": "cat", "level": "p3"}, ...],
     (tiled: each detection also has "tile": [x0, y0, x1, y1], or "full" for the full-image pass)
     "skipped": [{"id": 2, "file_name": "b/broken.jpg", "error": "..."}]}

* ``images``: every image that was processed, with the number of its detections, zero included, so that
  "nothing found" and "never looked at" read differently; ``skipped``: the inputs that could not be
  processed, with the reason (unreadable, or too thin for the model's resize).
* ``detections``: a COCO results list (``image_id``, ``category_id``, ``bbox`` as ``[x, y, width, height]``
  in the original image's pixels, ``score``) plus ``file_name``, ``category`` (the class name) and
  ``level``, the pyramid level whose RoI produced the box, named as the levels are (``"p3"``). Never a
  placeholder slot (the ``"N/A"`` ids of torchvision's COCO layout: see :mod:`fpn.detection.classes`).
  Tiled (``tile=``, see :mod:`fpn.engine.tiling`): ``tile``, the tile the detection came from, in the
  original image's pixels, or ``"full"`` for the full-image pass; the merged boxes are in the image's pixels.
* ``file_name``: the image's path relative to the folder holding all the inputs, ``/``-separated; unique
  even when two folders each hold an ``img.png``, and the bare file name when the inputs share a folder.
* ``id``: the inputs numbered from 1 in the order they are listed (sorted paths).

Images are taken as displayed (EXIF orientation applied), at any size. A 1x1 image is enlarged like any
small one (one flat colour: expect no detections). An image whose resize would leave a side under 1 px
(a 2000x3 strip) is skipped with a message naming it and its size, as an unreadable file is.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fpn.data.images import list_images, open_image
from fpn.detection import FasterRCNN
from fpn.detection.classes import keep_labels, label_mask
from fpn.device import resolve_device
from fpn.engine.tiling import FULL_IMAGE, TileOptions, detect_tiled
from fpn.errors import ConfigError, DataError, ImageError

log = logging.getLogger(__name__)


def file_names(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the deepest folder holding all of them, ``/``-separated (unique, stable)."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    if not absolute:
        return []
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    return [p.relative_to(root).as_posix() for p in absolute]


def to_records(file_name: str, detections: dict[str, torch.Tensor], model: FasterRCNN, *, image_id: int) -> list[dict]:
    """One JSON-ready record per detection, in COCO's results format (``[x, y, w, h]``) plus names."""
    config = model.config
    records = []
    tiles = detections["tiles"].tolist() if "tiles" in detections else [None] * len(detections["boxes"])
    for box, score, label, level, tile in zip(
        detections["boxes"].tolist(),
        detections["scores"].tolist(),
        detections["labels"].tolist(),
        detections["levels"].tolist(),
        tiles,
    ):
        x1, y1, x2, y2 = box
        record = {
            "image_id": image_id,
            "file_name": file_name,
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(score, 5),
            "category_id": config.category_id(int(label)),
            "category": config.class_names[int(label) - 1],
            "level": f"p{int(level)}",
        }
        if tile is not None:
            record["tile"] = "full" if tile[0] == FULL_IMAGE else tile
        records.append(record)
    return records


@dataclass
class DetectResult:
    path: Path
    file_name: str  # unique among the inputs (see file_names)
    image_id: int
    size: tuple[int, int] | None = None  # (height, width) as displayed
    detections: dict[str, torch.Tensor] | None = None  # on the CPU, original pixels
    image: object = None  # the RGB Pillow image, for drawing
    error: str | None = None
    records: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """This input's entry in the JSON: under ``images``, or under ``skipped`` when ``error`` is set."""
        if self.error is not None:
            return {"id": self.image_id, "file_name": self.file_name, "error": self.error}
        height, width = self.size
        return {
            "id": self.image_id,
            "file_name": self.file_name,
            "height": height,
            "width": width,
            "detections": len(self.records),
        }


def open_named_image(path: str | os.PathLike) -> Image.Image:
    """:func:`open_image` without Pillow's decompression-bomb warning: the user named this large file.

    Pillow still refuses an image over twice its pixel limit; that arrives as a DataError, i.e. a skip.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return open_image(path)


def _pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as uint8 ``[3, H, W]``: the model converts it to the floats ``pil_to_tensor`` gives,
    with a quarter of the memory until then (which matters for a 100-megapixel photo)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


@torch.inference_mode()
def detect_files(
    model: FasterRCNN,
    paths: Iterable[Path],
    *,
    device: torch.device,
    score_thresh: float | None = None,
    dtype: torch.dtype = torch.float32,
    winograd: bool = True,
    classes: Iterable[str | int] | None = None,
    tiling: TileOptions | None = None,
) -> Iterator[DetectResult]:
    """Detections for each image file; an image that cannot be processed yields a result with ``error`` set.

    ``classes`` keeps only those classes: names, or the model's category ids (see
    :func:`fpn.detection.classes.select_labels`; one the model lacks is a ConfigError before any image is
    read). Detections in placeholder slots (torchvision COCO layout's ``"N/A"``) are always dropped.

    The model is put in eval mode on ``device`` and optimized for inference in place, in ``dtype`` and with or
    without Winograd convolutions (see :meth:`FasterRCNN.optimize_for_inference`): reload it to train or save
    it afterwards.

    ``tiling``: detect in overlapping tiles of the image's native pixels, merged (:mod:`fpn.engine.tiling`);
    the score threshold and classes apply after the merge.
    """
    paths = list(paths)
    wanted = label_mask(model.config, classes)
    model.eval().to(device)
    if not model.optimized:
        # float32: the same detections to float rounding, faster; bfloat16: faster still, close but not equal.
        model.optimize_for_inference(dtype, winograd=winograd)
    for image_id, (path, name) in enumerate(zip(paths, file_names(paths)), start=1):
        try:
            image = open_named_image(path)
        except DataError as exc:
            yield DetectResult(path, name, image_id, error=str(exc))
            continue
        try:
            pixels = _pixels(image).to(device)
            out = model([pixels])[0] if tiling is None else detect_tiled(model, pixels, tiling)
            del pixels
        except ImageError as exc:  # too thin to resize: checked before any network runs
            yield DetectResult(path, name, image_id, error=f"{path}: {exc}")
            continue
        out = {k: v.cpu() for k, v in out.items()}
        if score_thresh is not None:
            keep = out["scores"] >= score_thresh
            out = {k: v[keep] for k, v in out.items()}
        # A placeholder slot never had an object to learn from: its scores say nothing, whatever their size.
        out = keep_labels(out, wanted)
        records = to_records(name, out, model, image_id=image_id)
        yield DetectResult(path, name, image_id, (image.height, image.width), out, image, records=records)


#: The ``--precision`` names of ``fpn detect`` and ``fpn bench``, and the dtype the networks then run in.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def precision_dtype(name: str) -> torch.dtype:
    """The dtype of a precision name (:data:`PRECISIONS`); another name is a ConfigError."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be {' or '.join(PRECISIONS)}; got {name!r}")
    return PRECISIONS[name]


def detect(
    model: FasterRCNN,
    sources: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    score_thresh: float | None = 0.5,
    precision: str = "fp32",
    device: str = "auto",
    classes: Iterable[str | int] | None = None,
    tile: int | TileOptions | None = None,
) -> Iterator[DetectResult]:
    """``fpn detect`` for a Python user: one :class:`DetectResult` per image of ``sources``, in order.

    ``sources``: image files, folders or glob patterns, as the command takes them (:func:`list_images`);
    ``precision``: ``"fp32"`` (torchvision's detections to float rounding) or ``"bf16"`` (faster where the CPU
    has bf16 instructions, close but not equal); ``device``: ``auto``, ``cpu`` or ``cuda``. Each result's
    ``records`` are the JSON records ``fpn detect`` writes; ``detections`` the tensors (original pixels);
    ``error`` says why an image was skipped. The model is optimized in place (see :func:`detect_files`).
    ``tile``: a tile size in px (the other settings at their defaults) or :class:`TileOptions`, to detect
    in overlapping tiles at the image's native resolution (:mod:`fpn.engine.tiling`).
    """
    dtype = precision_dtype(precision)
    tiling = TileOptions(tile) if isinstance(tile, int) and not isinstance(tile, bool) else tile
    if tiling is not None and not isinstance(tiling, TileOptions):
        raise ConfigError(f"tile must be a size in px or TileOptions; got {tile!r}")
    paths = list_images(sources)  # checked now, not at the first next(): a typo fails at the call
    return detect_files(
        model, paths, device=resolve_device(device), score_thresh=score_thresh, dtype=dtype,
        classes=classes, tiling=tiling,
    )  # fmt: skip


def _json_list(items: Sequence[dict]) -> str:
    """A JSON list with one item per line: readable, diffable, and still plain JSON."""
    return "[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]" if items else "[]"


def results_json(summaries: Sequence[dict], records: Sequence[dict]) -> str:
    """The ``fpn detect`` file (see the module's notes) from :meth:`DetectResult.summary` entries and records."""
    images = [s for s in summaries if "error" not in s]
    skipped = [s for s in summaries if "error" in s]
    parts = [("images", images), ("detections", records), ("skipped", skipped)]
    return "{\n" + ",\n".join(f"{json.dumps(key)}: {_json_list(items)}" for key, items in parts) + "\n}\n"
