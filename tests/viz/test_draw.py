"""Detection pictures at any size, measured in their pixels: strokes and labels scale with the image, labels
stay whole inside it and off each other, level pictures carry their legend."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fpn.viz.draw import LEVEL_COLOURS, class_colour, draw_detections

NAMES = ["ring", "triangle"]
GREY = (90, 90, 90)


def detections(boxes, labels, levels=None, scores=None) -> dict[str, torch.Tensor]:
    n = len(boxes)
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores if scores is not None else [0.9 - 0.1 * i for i in range(n)]),
        "labels": torch.tensor(labels),
    }
    if levels is not None:
        out["levels"] = torch.tensor(levels)
    return out


def drawn(size: tuple[int, int], dets: dict[str, torch.Tensor], **options) -> np.ndarray:
    return np.asarray(draw_detections(Image.new("RGB", size, GREY), dets, NAMES, **options))


def mask(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (pixels == np.array(colour, dtype=np.uint8)).all(axis=2)


def label_rect(pixels: np.ndarray, colour: tuple[int, int, int], min_span: int) -> tuple[int, int, int, int] | None:
    """The label patch of ``colour`` (x0, y0, x1, y1, inclusive): the rows whose pixels of that colour span
    more than ``min_span`` (a box narrower than that spans less, its label more)."""
    hit = mask(pixels, colour)
    rows = []
    for y in np.nonzero(hit.any(axis=1))[0]:
        xs = np.nonzero(hit[y])[0]
        if xs[-1] - xs[0] > min_span:
            rows.append((y, xs[0], xs[-1]))
    if not rows:
        return None
    return min(r[1] for r in rows), rows[0][0], max(r[2] for r in rows), rows[-1][0]


def outline_width(pixels: np.ndarray, colour: tuple[int, int, int], y: int, x_limit: int) -> int:
    return int(mask(pixels, colour)[y, :x_limit].sum())


def test_strokes_and_labels_scale_with_the_image() -> None:
    colour = class_colour(1)
    small = drawn((600, 600), detections([[100, 100, 500, 500]], [1]))
    large = drawn((6000, 6000), detections([[1000, 1000, 5000, 5000]], [1]))
    line_small, line_large = outline_width(small, colour, 300, 300), outline_width(large, colour, 3000, 3000)
    assert line_small >= 1 and line_large >= 20 and 8 <= line_large / line_small <= 14
    # Labels on narrow boxes (narrower than their label), so that only label rows span wide.
    small = drawn((600, 600), detections([[100, 100, 110, 300]], [1]))
    large = drawn((6000, 6000), detections([[1000, 1000, 1100, 3000]], [1]))
    rect_small, rect_large = label_rect(small, colour, 20), label_rect(large, colour, 200)
    height_small, height_large = rect_small[3] - rect_small[1] + 1, rect_large[3] - rect_large[1] + 1
    assert height_small >= 10 and height_large >= 100  # ~2% of the side: readable shown at screen size
    assert 6 <= height_large / height_small <= 14
    width_small, width_large = rect_small[2] - rect_small[0] + 1, rect_large[2] - rect_large[0] + 1
    assert 6 <= width_large / width_small <= 14


def test_labels_stay_whole_inside_the_picture() -> None:
    colour = class_colour(1)
    free = label_rect(drawn((600, 600), detections([[300, 300, 310, 400]], [1])), colour, 20)
    size = (free[2] - free[0], free[3] - free[1])
    # A narrow box in the top-right corner: above it there is no room, right of it neither.
    corner = label_rect(drawn((600, 600), detections([[588, 0, 600, 100]], [1])), colour, 20)
    assert corner is not None and (corner[2] - corner[0], corner[3] - corner[1]) == size
    assert corner[0] >= 0 and corner[1] >= 0 and corner[2] < 600 and corner[3] < 600
    assert corner[1] > 0  # moved below the box's top, not cut off above the picture


def test_labels_of_overlapping_boxes_do_not_cover_each_other() -> None:
    boxes, labels = [[200, 200, 215, 260], [203, 204, 218, 262]], [1, 2]
    pixels = drawn((600, 600), detections(boxes, labels, scores=[0.9, 0.8]))
    first, second = label_rect(pixels, class_colour(1), 30), label_rect(pixels, class_colour(2), 30)
    assert first is not None and second is not None
    apart = first[2] < second[0] or second[2] < first[0] or first[3] < second[1] or second[3] < first[1]
    assert apart, (first, second)
    for rect, box, label, score in ((first, boxes[0], 1, 0.9), (second, boxes[1], 2, 0.8)):  # each label whole
        alone = label_rect(drawn((600, 600), detections([box], [label], scores=[score])), class_colour(label), 30)
        assert (rect[2] - rect[0], rect[3] - rect[1]) == (alone[2] - alone[0], alone[3] - alone[1])
    # Many boxes on one spot: every label drawn is whole and alone, the ones with no room left out.
    boxes = [[300 + i, 300 + i, 312 + i, 340 + i] for i in range(12)]
    pixels = drawn((600, 600), detections(boxes, [1, 2] * 6, scores=[0.9] * 12))
    assert label_rect(pixels, class_colour(1), 30) is not None


def test_pictures_coloured_by_level_carry_their_legend() -> None:
    # Boxes in the bottom-left quarter: the legend goes to a free corner, top right.
    boxes = [[20 + 60 * i, 420, 60 + 60 * i, 460] for i in range(4)]
    dets = detections(boxes, [1, 2, 1, 2], levels=[2, 3, 4, 5])
    by_level = drawn((600, 600), dets, colour_by="level")
    assert by_level.shape == (600, 600, 3)  # a picture keeps its image's size
    corner = by_level[:300, 300:]
    for level in (2, 3, 4, 5):
        assert mask(corner, LEVEL_COLOURS[level]).sum() > 20, f"p{level} missing from the legend"
    assert mask(corner, LEVEL_COLOURS[6]).sum() == 0  # only the levels that found something
    for options in ({"colour_by": "class"}, {"colour_by": "level", "legend": False}):
        plain = drawn((600, 600), dets, **options)[:300, 300:]
        assert all(mask(plain, LEVEL_COLOURS[level]).sum() == 0 for level in (2, 3, 4, 5)), options
