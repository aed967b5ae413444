"""Boxes, labels and scores drawn on images, coloured by class or by the pyramid level that found them.

Pictures read the same at any size: outlines and letters are in proportion to the image (see
:mod:`fpn.viz.labels`), labels stay inside the picture and do not cover each other (the most confident
detection is labelled first; a label without a free place is made smaller, then left out, its box still
drawn), and a picture coloured by level carries its legend (which colour is which level) in the corner
that hides the fewest boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

from fpn.viz.labels import MIN_FONT, SHRINK, Rect, font, font_size, line_width, measure, place, text_colour

# One colour per pyramid level p2..p7, fine (warm) to coarse (cool), so "which level found it" reads at a glance.
LEVEL_COLOURS = {
    2: (230, 25, 75),
    3: (245, 130, 48),
    4: (60, 180, 75),
    5: (0, 130, 200),
    6: (145, 30, 180),
    7: (70, 70, 70),
}
UNKNOWN_LEVEL = (255, 255, 255)
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
]  # fmt: skip


def class_colour(label: int) -> tuple[int, int, int]:
    return _PALETTE[label % len(_PALETTE)]


def level_colour(level: int | None) -> tuple[int, int, int]:
    """The colour of pyramid level ``level`` (3 for p3); white for a level unknown (``None``, -1) or unlisted."""
    return LEVEL_COLOURS.get(level, UNKNOWN_LEVEL) if level is not None else UNKNOWN_LEVEL


def level_legend(levels: Sequence[int]) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend of a picture coloured by level: ``("p3", colour)`` for each level among ``levels``, finest
    first, and one entry for unknown levels (negative) if there are any."""
    items = [(f"p{lv}", level_colour(lv)) for lv in sorted(set(levels)) if lv >= 0]
    return items + ([("level ?", UNKNOWN_LEVEL)] if any(lv < 0 for lv in levels) else [])


def draw_detections(
    image: Image.Image,
    detections: dict[str, torch.Tensor],
    names: Sequence[str],
    *,
    colour_by: str = "class",
    show_level: bool = True,
    legend: bool = True,
) -> Image.Image:
    """A copy of ``image`` (same size) with each detection's box and ``"name 0.93 (p3)"`` label drawn.

    ``detections`` holds ``boxes`` [D, 4] xyxy in the image's pixels, ``scores``, ``labels`` (1-based into
    ``names``) and optionally ``levels``. ``colour_by`` is ``"class"`` or ``"level"``; by level, ``legend``
    draws the levels' colours in a corner of the picture.
    """
    boxes = detections["boxes"].tolist()
    scores = detections["scores"].tolist()
    labels = [int(v) for v in detections["labels"].tolist()]
    levels = [int(v) for v in detections["levels"].tolist()] if detections.get("levels") is not None else None
    colours, texts = [], []
    for i, (score, label) in enumerate(zip(scores, labels)):
        level = levels[i] if levels is not None else None
        colours.append(level_colour(level) if colour_by == "level" else class_colour(label))
        name = names[label - 1] if 0 < label <= len(names) else str(label)
        shown = show_level and level is not None and level >= 0
        texts.append(f"{name} {score:.2f}" + (f" (p{level})" if shown else ""))
    items = level_legend(levels) if colour_by == "level" and legend and levels is not None else None
    return draw_boxes(image, boxes, colours, texts, priority=scores, legend=items)


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    colours: Sequence[tuple[int, int, int]],
    texts: Sequence[str],
    *,
    priority: Sequence[float] | None = None,
    legend: Sequence[tuple[str, tuple[int, int, int]]] | None = None,
) -> Image.Image:
    """A copy of ``image`` with ``boxes`` (xyxy) outlined in ``colours`` and labelled with ``texts``; the
    boxes of highest ``priority`` (e.g. score) choose their label's place first; ``legend`` items (text,
    colour) are listed in a corner."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = line_width(out.size)
    for box, colour in zip(boxes, colours):
        draw.rectangle(box, outline=colour, width=width)
    taken: list[Rect] = []
    if legend:
        taken.append(draw_legend(draw, legend, out.size, boxes))
    ranks = priority if priority is not None else [0.0] * len(boxes)
    for i in sorted(range(len(boxes)), key=lambda i: -ranks[i]):  # stable: ties keep their order
        draw_label(draw, texts[i], colours[i], boxes[i], out.size, taken)
    return out


def draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    colour: tuple[int, int, int],
    box: Sequence[float],
    image: tuple[int, int],
    taken: list[Rect],
) -> Rect | None:
    """Draw ``text`` on a ``colour`` patch next to ``box`` where it is free (see :func:`fpn.viz.labels.place`),
    smaller if need be; returns where it went, or ``None`` when there was no room even at the smallest size."""
    size = font_size(image)
    while True:
        w, h, dx, dy = measure(text, size)
        rect = place(box, (w, h), image, taken) if w <= image[0] else None
        if rect is not None:
            draw.rectangle((rect[0], rect[1], rect[2] - 1, rect[3] - 1), fill=colour)
            draw.text((rect[0] + dx, rect[1] + dy), text, fill=text_colour(colour), font=font(size))
            return rect
        if size <= MIN_FONT:
            return None
        size = max(MIN_FONT, int(size * SHRINK))


def draw_legend(
    draw: ImageDraw.ImageDraw,
    items: Sequence[tuple[str, tuple[int, int, int]]],
    image: tuple[int, int],
    boxes: Sequence[Sequence[float]],
) -> Rect:
    """A white panel listing ``items`` (text, colour swatch) in the corner of ``image`` that overlaps the
    least box area; returns its rectangle (so that labels keep off it)."""
    if not items:
        return (0, 0, 0, 0)
    size = font_size(image)
    rows = [measure(text, size) for text, _ in items]
    row_h = max(h for _, h, _, _ in rows)
    pad = max(2, size // 3)
    panel_w = pad + row_h + pad + max(w for w, _, _, _ in rows) + pad
    panel_h = pad + len(items) * row_h + pad
    panel_w, panel_h = min(panel_w, image[0]), min(panel_h, image[1])
    corners = [
        (image[0] - panel_w, 0),
        (0, 0),
        (image[0] - panel_w, image[1] - panel_h),
        (0, image[1] - panel_h),
    ]

    def hidden(corner: tuple[int, int]) -> float:
        x0, y0 = corner
        total = 0.0
        for bx0, by0, bx1, by1 in boxes:
            total += max(0.0, min(bx1, x0 + panel_w) - max(bx0, x0)) * max(0.0, min(by1, y0 + panel_h) - max(by0, y0))
        return total

    x0, y0 = min(corners, key=hidden)  # ties: the first, top right
    draw.rectangle((x0, y0, x0 + panel_w - 1, y0 + panel_h - 1), fill=(255, 255, 255), outline=(0, 0, 0))
    for row, ((text, colour), (_, _, dx, dy)) in enumerate(zip(items, rows)):
        y = y0 + pad + row * row_h
        draw.rectangle((x0 + pad, y + 1, x0 + pad + row_h - 2, y + row_h - 2), fill=colour)
        draw.text((x0 + pad + row_h + pad + dx, y + dy), text, fill=(0, 0, 0), font=font(size))
    return (x0, y0, x0 + panel_w, y0 + panel_h)
