"""Mosaic and scale/translation jitter keep every box on its object: drawn objects, found again by colour.

Each object is a solid rectangle of a colour no other object has; after the transform, the pixels of that
colour must fill exactly the object's box (its tight bounding box), boxes cut by the border are clipped, and
objects left with less than ``min_visible`` of their area (or under 2 px a side) are dropped.
"""

from __future__ import annotations

import math

import pytest
import torch

from fpn.data.augment import FILL, RandomAffine
from fpn.data.mosaic import RandomMosaic, mosaic
from fpn.errors import ConfigError

COLOURS = [
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.5, 0.0),
]  # fmt: skip


def drawn(size: tuple[int, int], objects: list[tuple[int, tuple[int, int, int, int]]]) -> tuple[torch.Tensor, dict]:
    """A black image with solid rectangles: ``(label, (x1, y1, x2, y2))``, label ``i`` drawn in ``COLOURS[i - 1]``."""
    image = torch.zeros(3, *size)
    for label, (x1, y1, x2, y2) in objects:
        image[:, y1:y2, x1:x2] = torch.tensor(COLOURS[label - 1]).view(3, 1, 1)
    boxes = torch.tensor([box for _, box in objects], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([label for label, _ in objects], dtype=torch.int64)
    target = {"boxes": boxes, "labels": labels, "iscrowd": torch.zeros(len(objects), dtype=torch.bool), "image_id": 7}
    return image, target


def colour_box(image: torch.Tensor, label: int, tolerance: float = 1e-6) -> tuple[list[float] | None, int]:
    """The tight box of the pixels of ``label``'s colour, and how many there are."""
    colour = torch.tensor(COLOURS[label - 1]).view(3, 1, 1)
    mask = ((image - colour).abs() <= tolerance).all(0)
    if not mask.any():
        return None, 0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1], int(mask.sum())


# Four 40x40 images, two objects each, eight colours.
IMAGES = [
    drawn((40, 40), [(1, (2, 4, 10, 12)), (2, (16, 20, 24, 36))]),
    drawn((40, 40), [(3, (5, 5, 15, 15)), (4, (30, 30, 39, 38))]),
    drawn((40, 40), [(5, (0, 0, 40, 3)), (6, (12, 10, 30, 30))]),
    drawn((40, 40), [(7, (1, 1, 6, 6)), (8, (25, 2, 35, 12))]),
]
AREAS = {
    int(label): float((b[2] - b[0]) * (b[3] - b[1])) for _, t in IMAGES for b, label in zip(t["boxes"], t["labels"])
}


def test_mosaic_boxes_follow_their_objects_and_cut_ones_are_clipped_or_dropped() -> None:
    # Centre (20, 25): image 0's bottom-right corner there, so its left half and top 15 rows are off the canvas.
    image, target = mosaic(IMAGES, (20, 25), min_visible=0.25)
    assert image.shape == (3, 40, 40) and target["orig_size"] == (40, 40) and target["image_id"] == 7
    labels = target["labels"].tolist()
    # By hand: object 1 (x 2..10 of image 0, at x -18..-10) is off the canvas; object 2 (x 16..24, y 20..36)
    # lands at x -4..4, y 5..21: 4 of its 8 columns are left, half its area, kept and clipped.
    assert 1 not in labels
    assert target["boxes"][labels.index(2)].tolist() == [0.0, 5.0, 4.0, 21.0]
    for box, label in zip(target["boxes"].tolist(), labels):
        found, pixels = colour_box(image, label)
        assert found == box, label  # the box is exactly where its object's pixels are
        assert pixels >= 0.25 * AREAS[label]
    for label in set(AREAS) - set(labels):  # every dropped object is (almost) gone from view
        found, pixels = colour_box(image, label)
        assert pixels < 0.25 * AREAS[label] or min(found[2] - found[0], found[3] - found[1]) < 2, label
    assert target["iscrowd"].shape == target["labels"].shape == (len(labels),)
    # Where no image lands (none here: the four tile the canvas), and the inputs are untouched.
    assert IMAGES[0][1]["boxes"][0].tolist() == [2.0, 4.0, 10.0, 12.0]


def test_mosaic_centre_at_a_corner_keeps_one_image_and_fills_nothing_else() -> None:
    image, target = mosaic(IMAGES, (0, 0))  # only the bottom-right image, image 3, is on the canvas
    assert torch.equal(image, IMAGES[3][0])
    assert torch.equal(target["boxes"], IMAGES[3][1]["boxes"]) and target["labels"].tolist() == [7, 8]


def test_mosaic_resizes_other_images_to_the_first_ones_long_side() -> None:
    small = drawn((20, 10), [(3, (2, 4, 8, 16))])  # 10 wide, 20 high: twice as large on the 40 px canvas
    items = [IMAGES[0], small, IMAGES[2], IMAGES[3]]
    image, target = mosaic(items, (10, 39), min_visible=0.1)
    box = target["boxes"][target["labels"].tolist().index(3)].tolist()
    assert box == [14.0, 7.0, 26.0, 31.0]  # x 2..8 -> 4..16, placed at x 10; y 4..16 -> 8..32, at y 39 - 40
    found, _ = colour_box(image, 3, tolerance=0.02)  # bilinear edges blend: the solid core, within a pixel
    assert all(abs(a - b) <= 1.0 for a, b in zip(found, box)), (found, box)


def test_random_mosaic_draws_reproducibly_and_p_zero_is_the_item_alone() -> None:
    loads: list[int] = []

    def load(index: int) -> tuple[torch.Tensor, dict]:
        loads.append(index)
        return IMAGES[index]

    alone = RandomMosaic(0.0)(load, 2, 4)
    assert alone is IMAGES[2] and loads == [2]

    def draw(seed: int) -> tuple[torch.Tensor, dict, list[int]]:
        loads.clear()
        image, target = RandomMosaic(1.0, generator=torch.Generator().manual_seed(seed))(load, 1, 4)
        return image, target, list(loads)

    a, b = draw(5), draw(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) and a[2] == b[2]
    assert a[2][0] == 1 and len(a[2]) == 4 and all(0 <= i < 4 for i in a[2])
    assert any(not torch.equal(draw(s)[0], a[0]) for s in range(6, 10))
    with pytest.raises(ConfigError):
        RandomMosaic(1.5)


def test_scale_and_translation_move_boxes_with_their_objects() -> None:
    image, target = drawn((48, 64), [(1, (4, 4, 20, 20)), (2, (40, 10, 60, 40)), (4, (22, 30, 30, 46))])
    originals = dict(zip(target["labels"].tolist(), target["boxes"].tolist()))
    dropped = 0
    for seed in range(24):
        affine = RandomAffine(0.5, 0.45, min_visible=0.3, generator=torch.Generator().manual_seed(seed))
        out, moved = affine(image, target)
        assert out.shape == image.shape and target["boxes"].shape == (3, 4)  # the input is untouched
        for box, label in zip(moved["boxes"].tolist(), moved["labels"].tolist()):
            assert 0 <= box[0] < box[2] <= 64 and 0 <= box[1] < box[3] <= 48
            # Resized edges blend over a pixel or so (more when shrinking: antialiasing): the object's solid core
            # lies inside its box and fills it but for that margin.
            found, _ = colour_box(out, label, tolerance=0.02)
            assert found is not None, (seed, label)
            assert math.floor(box[0]) <= found[0] and math.floor(box[1]) <= found[1], (seed, label, found, box)
            assert found[2] <= math.ceil(box[2]) and found[3] <= math.ceil(box[3]), (seed, label, found, box)
            assert all(abs(a - b) <= 1.6 for a, b in zip(found, box)), (seed, label, found, box)
            x1, y1, x2, y2 = originals[label]
            if box[0] > 0 and box[2] < 64 and box[1] > 0 and box[3] < 48:  # not clipped: scaled by the gain
                assert 0.5 - 0.05 <= (box[2] - box[0]) / (x2 - x1) <= 1.5 + 0.05
        for label in set(originals) - set(moved["labels"].tolist()):  # dropped: too little of it is in view
            dropped += 1
            _, pixels = colour_box(out, label, tolerance=0.02)
            x1, y1, x2, y2 = originals[label]
            assert pixels < 0.3 * (x2 - x1) * (y2 - y1) * 1.5**2 + 2 * (x2 - x1 + y2 - y1), (seed, label)
    assert dropped > 0  # the seeds above shift some objects off the canvas


def test_a_shrunk_image_leaves_grey_around_it_and_no_jitter_is_the_identity() -> None:
    image, target = drawn((40, 40), [(1, (10, 10, 30, 30))])
    seen = set()
    for seed in range(10):
        out, moved = RandomAffine(0.5, 0.0, generator=torch.Generator().manual_seed(seed))(image, target)
        shrunk = float(moved["boxes"][0, 2] - moved["boxes"][0, 0]) < 19.5
        assert bool((out[:, 0, 0] == FILL).all()) == shrunk  # a smaller image leaves its border grey
        seen.add(shrunk)
    assert seen == {True, False}
    same, kept = RandomAffine(0.0, 0.0)(image, target)
    assert same is image and kept is target
    with pytest.raises(ConfigError):
        RandomAffine(1.0, 0.0)
