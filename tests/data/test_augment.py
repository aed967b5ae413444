"""Augmentation: flipped boxes still cover the flipped pixels, and randomness is reproducible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from fpn.data import CocoDataset, RandomHorizontalFlip, hflip, write_coco
from fpn.errors import ConfigError


def _sample() -> tuple[torch.Tensor, dict]:
    image = torch.zeros(3, 6, 10)
    image[:, 2:6, 1:4] = 1.0  # an object covering columns 1..3, rows 2..5
    target = {"boxes": torch.tensor([[1.0, 2.0, 4.0, 6.0]]), "labels": torch.tensor([1]), "image_id": 5}
    return image, target


def test_hflip_moves_boxes_with_the_pixels() -> None:
    image, target = _sample()
    flipped_image, flipped = hflip(image, target)
    assert flipped["boxes"].tolist() == [[6.0, 2.0, 9.0, 6.0]]
    x1, y1, x2, y2 = (int(v) for v in flipped["boxes"][0])
    assert bool((flipped_image[:, y1:y2, x1:x2] == 1).all()) and float(flipped_image.sum()) == float(image.sum())
    assert flipped["labels"] is target["labels"] and flipped["image_id"] == 5
    # Inputs are untouched, and flipping twice is the identity.
    assert target["boxes"].tolist() == [[1.0, 2.0, 4.0, 6.0]]
    back_image, back = hflip(flipped_image, flipped)
    assert torch.equal(back_image, image) and torch.equal(back["boxes"], target["boxes"])


def test_flip_handles_images_without_boxes() -> None:
    _, target = hflip(torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    assert target["boxes"].shape == (0, 4)


def test_random_flip_probability_and_determinism() -> None:
    image, target = _sample()
    assert RandomHorizontalFlip(1.0)(image, target)[1]["boxes"][0, 0] == 6.0
    assert RandomHorizontalFlip(0.0)(image, target)[1] is target

    def draws(seed: int) -> list[bool]:
        flip = RandomHorizontalFlip(0.5, torch.Generator().manual_seed(seed))
        return [bool(flip(image, target)[1]["boxes"][0, 0] == 6.0) for _ in range(200)]

    assert draws(1) == draws(1) and draws(1) != draws(2)
    assert 70 < sum(draws(1)) < 130
    with pytest.raises(ConfigError):
        RandomHorizontalFlip(1.5)


def test_dataset_applies_its_transform(tmp_path: Path) -> None:
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    path = write_coco(
        tmp_path / "a.json",
        [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
        [{"image_id": 1, "category_id": 1, "bbox": [2, 1, 5, 5]}],
        [{"id": 1, "name": "thing"}],
    )
    dataset = CocoDataset(path, tmp_path, transform=RandomHorizontalFlip(1.0))
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[13.0, 1.0, 18.0, 6.0]]
    assert dataset.target(0)["boxes"].tolist() == [[2.0, 1.0, 7.0, 6.0]]  # the record is unchanged
