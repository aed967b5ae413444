"""Text on pictures of any size: a scalable font, strokes and letters in proportion to the image, and label
places that stay inside the picture without covering each other.

A 640x480 photo and a 6000x6000 aerial image shown on the same screen should carry labels that read the
same, so every size here is a fraction of the image's ``width + height`` (:func:`line_width`,
:func:`font_size`), and the font is Pillow's scalable default (``ImageFont.load_default(size=...)``, Pillow
10.1 and later with FreeType; Pillow's fixed 11 px bitmap font otherwise, which does not scale).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from PIL import ImageFont

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)

#: A box's outline is this fraction of ``width + height`` (at least 1 px): 2 px on 640x480, 24 on 6000x6000.
LINE_FRACTION = 0.002
#: A label's font size is this fraction of ``width + height`` (at least :data:`MIN_FONT`): 12 px on
#: 640x480, 132 px on 6000x6000.
FONT_FRACTION = 0.011
MIN_FONT = 10
#: A label with no free place is tried again this much smaller, down to :data:`MIN_FONT`, then left out.
SHRINK = 0.7


def line_width(size: tuple[int, int]) -> int:
    """Box outline width in pixels for an image of ``size`` (width, height)."""
    return max(1, round(LINE_FRACTION * (size[0] + size[1])))


def font_size(size: tuple[int, int]) -> int:
    """Label font size in pixels for an image of ``size`` (width, height)."""
    return max(MIN_FONT, round(FONT_FRACTION * (size[0] + size[1])))


@functools.lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` px (scalable where Pillow has FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def measure(text: str, size: int) -> tuple[int, int, int, int]:
    """``(width, height, dx, dy)`` of ``text`` at ``size`` px: the padded label's extent, and where to draw
    the text from the label's corner so that its ink sits inside the padding (Pillow places text by its
    ascender line, not by its ink)."""
    left, top, right, bottom = font(size).getbbox(text)
    pad = max(1, size // 6)
    return right - left + 2 * pad, bottom - top + 2 * pad, pad - left, pad - top


def overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def candidates(box: Sequence[float], label: tuple[int, int], image: tuple[int, int]) -> list[Rect]:
    """Where a ``label`` (width, height) of ``box`` (xyxy) may go, in order of preference: above the box,
    below it, inside its top, inside its bottom; each moved left as far as needed to end inside the image,
    and only those wholly inside the image."""
    w, h = label
    width, height = image
    x = int(min(max(box[0], 0), width - w))
    top, bottom = round(box[1]), round(box[3])
    places = [(x, top - h), (x, bottom), (x, top), (x, bottom - h)]
    return [(px, py, px + w, py + h) for px, py in places if px >= 0 and py >= 0 and py + h <= height]


def place(box: Sequence[float], label: tuple[int, int], image: tuple[int, int], taken: list[Rect]) -> Rect | None:
    """The first of :func:`candidates` that covers no rectangle of ``taken`` (which it joins), or ``None``."""
    for rect in candidates(box, label, image):
        if not any(overlaps(rect, other) for other in taken):
            taken.append(rect)
            return rect
    return None


def text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    return (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 150 else (255, 255, 255)
