"""Photo-sized test images drawn in integer arithmetic only (torch is the only dependency).

The real-size parity goldens (``make_realsize_goldens.py``) need images of ordinary photo sizes, which would
weigh megabytes each as PNG files. Instead both sides draw them: the reference venv when it makes the goldens,
the test suite when it checks them. Every step is integer arithmetic on ``torch.randint`` values from a seeded
CPU generator (a serial, exact kernel), so the pixels are bit-identical across torch builds and CPUs; the
goldens store each image's SHA-256 and the tests check it before comparing detections.

An image is a bilinear colour gradient, a few dozen filled rectangles and ellipses of random sizes (small to
a third of the image, so that every pyramid level has something to see), a 3x3 box blur and a little noise.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["PHOTO_SPECS", "draw_photo", "photo_sha256"]

PHOTO_SPECS: dict[str, tuple[int, int, int]] = {
    "photo0_333x500.png": (333, 500, 101),  # landscape 2:3, upscaled 2.4x to 800x1201
    "photo1_640x480.png": (640, 480, 102),  # portrait 4:3
    "photo2_400x400.png": (400, 400, 103),  # a square aerial tile
    "photo3_997x1058.png": (997, 1058, 104),  # a drone photo, odd sizes
    "photo4_750x1333.png": (750, 1333, 105),  # wide: the longer side meets max_size, so no resize at all
}
"""File name -> (height, width, drawing seed). Shorter sides 333..997 px."""


def draw_photo(height: int, width: int, seed: int, shapes: int = 40) -> torch.Tensor:
    """A deterministic RGB image, ``uint8 [3, height, width]``."""
    gen = torch.Generator().manual_seed(seed)

    def randint(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=gen, dtype=torch.int64)

    ys = torch.arange(height, dtype=torch.int64)[:, None]
    xs = torch.arange(width, dtype=torch.int64)[None, :]
    corners = randint(40, 216, 4, 3)[:, :, None, None]  # [4 corners, 3 channels, 1, 1]
    wy, wx = height - 1 - ys, width - 1 - xs
    image = (corners[0] * wy * wx + corners[1] * wy * xs + corners[2] * ys * wx + corners[3] * ys * xs) // max(
        1, (height - 1) * (width - 1)
    )
    for index in range(shapes):
        cy, cx = int(randint(0, height)), int(randint(0, width))
        # Half-sizes from 4 px to a sixth of the image's side, most of them small.
        hh = 4 + int(randint(0, max(1, height // 6))) * int(randint(1, 4)) // 3
        hw = 4 + int(randint(0, max(1, width // 6))) * int(randint(1, 4)) // 3
        colour = randint(0, 256, 3)[:, None, None]
        if index % 2 == 0:
            mask = ((ys - cy).abs() <= hh) & ((xs - cx).abs() <= hw)
        else:
            mask = (ys - cy) ** 2 * hw * hw + (xs - cx) ** 2 * hh * hh <= hh * hh * hw * hw
        image = torch.where(mask, colour, image)
    padded = torch.nn.functional.pad(image[None].double(), (1, 1, 1, 1), mode="replicate")[0].long()
    blurred = sum(padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) // 9
    noise = randint(-4, 5, 3, height, width)
    return (blurred + noise).clamp(0, 255).to(torch.uint8)


def photo_sha256(image: torch.Tensor) -> str:
    """The SHA-256 of a ``uint8 [3, H, W]`` image's bytes (CHW order)."""
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()
