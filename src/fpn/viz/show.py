"""What happens at each pyramid level for one image: maps, counts, and which level found which object.

:func:`inspect_image` runs a detector once and collects, per level: anchors, positive anchors for the
given ground-truth boxes (the detector's training assignment: the RPN's 0.7/0.3 matcher), what the detector
counts there (Faster R-CNN: proposals kept after NMS, RoIs pooled from the level; a one-stage detector: its
candidates), and final detections produced at that level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

from fpn.detection import PyramidDetector
from fpn.detection.classes import keep_labels, label_mask
from fpn.detection.transform import resize_boxes
from fpn.viz.draw import LEVEL_COLOURS, draw_detections


@dataclass
class Inspection:
    bottom_up: dict[str, torch.Tensor]  # one image's C maps [C, h, w] (padded input)
    pyramid: dict[str, torch.Tensor]  # one image's P maps
    resized: tuple[int, int]  # (h, w) of the resized image inside the padding
    detections: dict[str, torch.Tensor]  # original pixels, with "levels"
    counts: dict[str, dict[str, int]]  # level name -> {anchors, positive_anchors, proposals, rois, detections}


@torch.inference_mode()
def inspect_image(model: PyramidDetector, image: torch.Tensor, boxes: torch.Tensor | None = None) -> Inspection:
    """Run ``model`` on one image (anything ``model`` takes: a ``[3, H, W]`` tensor, a PIL image); ``boxes``
    ([G, 4] xyxy, original pixels) count positive anchors. An image the model refuses raises ImageError.

    The per-level counts are the detector's own (:meth:`~fpn.detection.base.PyramidDetector.level_counts`:
    Faster R-CNN's anchors, proposals and RoIs; a one-stage detector's anchors and candidates), with
    ``positive_anchors`` after the first and ``detections`` last."""
    model.eval()
    batch, _ = model.transform([image])
    bottom_up, pyramid = model.features(batch.tensors)
    detections = keep_labels(model([image])[0], label_mask(model.config))  # no placeholder slots
    levels = [lv.name for lv in model.levels]
    positives = dict.fromkeys(levels, 0)
    if boxes is not None and len(boxes):
        sizes = {name: pyramid[name].shape[-2:] for name in levels}
        gt = resize_boxes(boxes.float(), batch.original_sizes[0], batch.image_sizes[0])
        positives = model.positives(batch.tensors.shape[-2:], sizes, gt)
    counts = {}
    for name, row in model.level_counts().items():
        found = int((detections["levels"] == int(name[1:])).sum())
        first, *rest = row.items()  # anchors (or locations), then the positives among them
        counts[name] = {first[0]: first[1], "positive_anchors": positives[name], **dict(rest), "detections": found}
    return Inspection(
        {k: v[0] for k, v in bottom_up.items()},
        {k: v[0] for k, v in pyramid.items()},
        batch.image_sizes[0],
        detections,
        counts,
    )


def object_size_range(model: PyramidDetector, index: int) -> str:
    """Which objects level ``index`` is meant for, in the detector's words (``RoIs 56-112 px``)."""
    return model.level_roles()[f"p{index}"]


def detections_by_level(
    image: Image.Image, inspection: Inspection, model: PyramidDetector, *, min_side: int = 480
) -> Image.Image:
    """Detections coloured by the level that produced them, with a legend: level -> stride -> object size.

    Images whose shorter side is under ``min_side`` are enlarged first, so that labels stay legible.
    """
    scale = max(1.0, min_side / min(image.size))
    detections = dict(inspection.detections)
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        detections["boxes"] = detections["boxes"] * scale
    drawn = draw_detections(image, detections, model.config.class_names, colour_by="level", legend=False)
    font = ImageFont.load_default()
    rows = [lv for lv in model.levels if lv.index <= 5 or lv.index in LEVEL_COLOURS]
    line = 14
    legend = Image.new("RGB", (drawn.width, line * (len(rows) + 1) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    draw.text((4, 2), "level  stride  objects (resized image)  detections", fill=(0, 0, 0), font=font)
    for i, lv in enumerate(rows, start=1):
        y = 2 + i * line
        draw.rectangle((4, y + 2, 14, y + 11), fill=LEVEL_COLOURS.get(lv.index, (0, 0, 0)))
        found = inspection.counts[lv.name]["detections"]
        text = f"{lv.name}   {lv.stride:>3}   {object_size_range(model, lv.index)}   {found}"
        draw.text((20, y), text, fill=(0, 0, 0), font=font)
    out = Image.new("RGB", (drawn.width, drawn.height + legend.height), (255, 255, 255))
    out.paste(drawn, (0, 0))
    out.paste(legend, (0, drawn.height))
    return out


def counts_table(counts: dict[str, dict[str, int]]) -> str:
    """A plain-text table of per-level counts (the columns the detector counted) with a total row."""
    keys = list(next(iter(counts.values())))
    header = f"{'level':<6}" + "".join(f"{k:>18}" for k in keys)
    lines = [header]
    for name, row in counts.items():
        lines.append(f"{name:<6}" + "".join(f"{row[k]:>18}" for k in keys))
    lines.append(f"{'total':<6}" + "".join(f"{sum(r[k] for r in counts.values()):>18}" for k in keys))
    return "\n".join(lines)


def parse_boxes(values: Sequence[str]) -> torch.Tensor:
    """``["x1,y1,x2,y2", ...]`` -> ``[G, 4]``."""
    from fpn.errors import ConfigError

    rows = []
    for value in values:
        parts = value.split(",")
        try:
            row = [float(p) for p in parts]
        except ValueError:
            row = []
        if len(row) != 4 or row[2] <= row[0] or row[3] <= row[1]:
            raise ConfigError(f"--box {value!r}: expected x1,y1,x2,y2 with x2 > x1 and y2 > y1")
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
