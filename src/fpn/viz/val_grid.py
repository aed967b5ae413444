"""The grid people look at after training: val images with their ground truth beside the model's predictions.

Each image gets two cells of :data:`CELL` x :data:`CELL` px, side by side: on the left its objects (boxes
and class names, coloured by class), on the right the detections with a score at or above the threshold
(the best-F1 threshold of the evaluation), coloured by the pyramid level that found them, with the levels'
legend. Two images per row; the picture is ``4 * CELL`` px wide (``2 * CELL`` for a single image) and
``HEADER + CELL * rows`` px high. Images are scaled to fit their cell (aspect kept, on grey), boxes with them,
so labels are drawn at the cell's size and read the same whatever the images' own sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from fpn.data.images import open_image
from fpn.errors import DataError
from fpn.viz.draw import class_colour, draw_boxes, level_colour, level_legend
from fpn.viz.labels import font, measure

CELL = 400
HEADER = 40
PAIRS_PER_ROW = 2
SEPARATOR = 8
#: Without a best threshold (no objects to compute it on), predictions from this score on are shown.
DEFAULT_THRESHOLD = 0.25
BACKGROUND = (128, 128, 128)


def grid_size(images: int) -> tuple[int, int]:
    """(width, height) of the grid of ``images`` images."""
    columns = 2 * min(images, PAIRS_PER_ROW)
    return CELL * columns, HEADER + CELL * math.ceil(images / PAIRS_PER_ROW)


def _fit(image: Image.Image) -> tuple[Image.Image, float, tuple[int, int]]:
    """``image`` scaled into a grey cell: the cell, the scale, and the offset of the image inside it."""
    scale = min(CELL / image.width, CELL / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    cell = Image.new("RGB", (CELL, CELL), BACKGROUND)
    offset = ((CELL - size[0]) // 2, (CELL - size[1]) // 2)
    cell.paste(image.resize(size, Image.Resampling.BILINEAR), offset)
    return cell, scale, offset


def _placed(boxes: Sequence[Sequence[float]], scale: float, offset: tuple[int, int]) -> list[list[float]]:
    return [[b[0] * scale + offset[0], b[1] * scale + offset[1], b[2] * scale + offset[0], b[3] * scale + offset[1]]
            for b in boxes]  # fmt: skip


def val_grid(
    dataset: Any,
    image_ids: Sequence[int],
    detections: Sequence[dict[str, Any]],
    threshold: float | None,
) -> Image.Image | None:
    """The grid of the images ``image_ids`` of ``dataset`` (a :class:`~fpn.data.DetectionDataset`), their
    ground truth beside ``detections`` (COCO results with ``level``) scoring at least ``threshold``;
    ``None`` when none of the images can be read."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    records = {int(r.image_id): r for r in dataset.records}
    pairs = []
    for image_id in image_ids:
        record = records.get(int(image_id))
        if record is None:
            continue
        try:
            image = open_image(record.path)
        except DataError:
            continue  # a val image broken since the evaluation costs its cell, not the plots
        pairs.append(_pair(dataset, record, image, [d for d in detections if d["image_id"] == image_id], threshold))
    if not pairs:
        return None
    out = Image.new("RGB", grid_size(len(pairs)), (255, 255, 255))
    for i, (truth, predicted) in enumerate(pairs):
        x, y = 2 * CELL * (i % PAIRS_PER_ROW), HEADER + CELL * (i // PAIRS_PER_ROW)
        out.paste(truth, (x, y))
        out.paste(predicted, (x + CELL, y))
    draw = ImageDraw.Draw(out)
    # White lines: thin between an image's two cells, wide between images, so that each pair reads as one.
    for x in range(CELL, out.width, CELL):
        half = (SEPARATOR if x % (2 * CELL) == 0 else 2) // 2
        draw.rectangle((x - half, HEADER, x + half - 1, out.height - 1), fill=(255, 255, 255))
    for y in range(HEADER + CELL, out.height, CELL):
        draw.rectangle((0, y - SEPARATOR // 2, out.width - 1, y + SEPARATOR // 2 - 1), fill=(255, 255, 255))
    text = f"left: ground truth (by class)   right: predictions with score >= {threshold:.2f} (by pyramid level)"
    size = 16
    while measure(text, size)[0] > out.width - 8 and size > 8:
        size -= 1
    _, h, dx, dy = measure(text, size)
    draw.text((4 + dx, (HEADER - h) // 2 + dy), text, fill=(0, 0, 0), font=font(size))
    return out


def _pair(
    dataset: Any, record: Any, image: Image.Image, detections: Sequence[dict[str, Any]], threshold: float
) -> tuple[Image.Image, Image.Image]:
    """The two cells of one image: its objects, and its detections at or above ``threshold``."""
    cell, scale, offset = _fit(image)
    names = dataset.names
    labels = [int(v) for v in record.labels]
    truth = draw_boxes(
        cell,
        _placed(record.boxes.tolist(), scale, offset),
        [class_colour(label) for label in labels],
        [names[label - 1] if 0 < label <= len(names) else str(label) for label in labels],
    )
    shown = [d for d in detections if d["score"] >= threshold]
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in shown)]
    levels = [int(d["level"][1:]) if d.get("level") else -1 for d in shown]
    texts = []
    for d in shown:
        label = dataset.category_id_to_label(d["category_id"])
        texts.append(f"{names[label - 1]} {d['score']:.2f}")
    predicted = draw_boxes(
        cell,
        _placed(xyxy, scale, offset),
        [level_colour(lv) for lv in levels],
        texts,
        priority=[d["score"] for d in shown],
        legend=level_legend(levels),
    )
    return truth, predicted
