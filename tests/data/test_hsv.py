"""HSV colour jitter: the conversions against hand values, gains as drawn, pixels (and boxes) staying put."""

from __future__ import annotations

import pytest
import torch

from fpn.data.augment import uniform
from fpn.data.hsv import RandomHSV, hsv_to_rgb, rgb_to_hsv
from fpn.errors import ConfigError


def pixel(*rgb: float) -> torch.Tensor:
    return torch.tensor(rgb).view(3, 1, 1)


def test_conversions_against_hand_values_and_round_trip() -> None:
    # (0.2, 0.4, 0.8): value 0.8, saturation 0.6 / 0.8, blue is largest so hue = ((r - g) / 0.6 + 4) / 6.
    cases = [
        ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)),
        ((0.0, 0.5, 0.0), (1 / 3, 1.0, 0.5)),
        ((0.2, 0.4, 0.8), ((-0.2 / 0.6 + 4) / 6, 0.75, 0.8)),
        ((0.3, 0.3, 0.3), (0.0, 0.0, 0.3)),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ]
    for rgb, hsv in cases:
        assert torch.allclose(rgb_to_hsv(pixel(*rgb)).flatten(), torch.tensor(hsv), atol=1e-6), rgb
        assert torch.allclose(hsv_to_rgb(pixel(*hsv)).flatten(), torch.tensor(rgb), atol=1e-6), hsv
    image = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0))
    assert (hsv_to_rgb(rgb_to_hsv(image)) - image).abs().max() < 1e-5


def test_gains_are_drawn_per_image_and_pixels_stay_where_they_are() -> None:
    image = torch.zeros(3, 10, 12)
    image[:, 2:6, 3:9] = pixel(0.2, 0.4, 0.8)
    target = {"boxes": torch.tensor([[3.0, 2.0, 9.0, 6.0]]), "labels": torch.tensor([1])}
    out, kept = RandomHSV((0.0, 0.5, 0.4), torch.Generator().manual_seed(3))(image, target)
    assert kept is target  # colour moves no pixel
    replay = torch.Generator().manual_seed(3)
    gains = [1 + uniform(-g, g, replay) for g in (0.0, 0.5, 0.4)]
    hue, saturation, value = rgb_to_hsv(pixel(0.2, 0.4, 0.8)).flatten().tolist()
    expected = hsv_to_rgb(pixel(hue, min(saturation * gains[1], 1.0), min(value * gains[2], 1.0))).flatten()
    assert torch.allclose(out[:, 4, 5], expected, atol=1e-6)
    assert torch.equal(out[:, 0, 0], torch.zeros(3))  # black stays black, whatever the gains
    assert ((out != 0).any(0) == (image != 0).any(0)).all()  # the object's pixels, and only those, are coloured


def test_no_gains_is_the_identity_and_bad_gains_are_refused() -> None:
    image = torch.rand(3, 4, 4)
    assert RandomHSV((0.0, 0.0, 0.0))(image, {})[0] is image
    with pytest.raises(ConfigError):
        RandomHSV((0.1, 0.2))
    with pytest.raises(ConfigError):
        RandomHSV((0.1, 0.2, 1.5))
