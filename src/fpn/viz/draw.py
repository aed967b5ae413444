"""Boxes, labels and scores drawn on images, coloured by class or by the pyramid level that found them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

# One colour per pyramid level p2..p7, fine (warm) to coarse (cool), so "which level found it" reads at a glance.
LEVEL_COLOURS = {
    2: (230, 25, 75),
    3: (245, 130, 48),
    4: (60, 180, 75),
    5: (0, 130, 200),
    6: (145, 30, 180),
    7: (70, 70, 70),
}
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
]  # fmt: skip


def class_colour(label: int) -> tuple[int, int, int]:
    return _PALETTE[label % len(_PALETTE)]


def draw_detections(
    image: Image.Image,
    detections: dict[str, torch.Tensor],
    names: Sequence[str],
    *,
    colour_by: str = "class",
    show_level: bool = True,
) -> Image.Image:
    """A copy of ``image`` with each detection's box and ``"name 0.93 (p3)"`` label drawn.

    ``detections`` holds ``boxes`` [D, 4] xyxy in the image's pixels, ``scores``, ``labels`` (1-based into
    ``names``) and optionally ``levels``. ``colour_by`` is ``"class"`` or ``"level"``.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = max(1, round(min(out.size) / 300))
    levels = detections.get("levels")
    for i, (box, score, label) in enumerate(
        zip(detections["boxes"].tolist(), detections["scores"].tolist(), detections["labels"].tolist())
    ):
        level = int(levels[i]) if levels is not None else None
        colour = LEVEL_COLOURS.get(level, (255, 255, 255)) if colour_by == "level" else class_colour(int(label))
        name = names[int(label) - 1] if 0 < int(label) <= len(names) else str(int(label))
        text = f"{name} {score:.2f}" + (f" (p{level})" if show_level and level is not None else "")
        draw.rectangle(box, outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
        y = box[1] - (bottom - top) - 2 if box[1] - (bottom - top) - 2 >= 0 else box[1]
        draw.rectangle((box[0], y, box[0] + right - left + 2, y + bottom - top + 2), fill=colour)
        draw.text((box[0] + 1, y), text, fill=(255, 255, 255), font=font)
    return out
