"""What a measured detector sees: its test size, a resize that keeps a chosen size, and synthetic images and targets.

The inputs are deterministic (seeded) so that two processes (a run and its memory probe) or two models (fpn
and the torchvision reference) measure the same work.
"""

from __future__ import annotations

import torch

from fpn.config import ModelConfig


def eval_size(config: ModelConfig) -> tuple[int, int]:
    """(height, width) of a preset's test image: shorter side ``min_size[-1]``, 4:3, longer side capped."""
    shorter = config.transform.min_size[-1]
    return shorter, min(round(shorter * 4 / 3), config.transform.max_size)


def fit_input(model: torch.nn.Module, height: int, width: int) -> None:
    """Make the detector's resize keep a ``height x width`` image as it is, so the network sees that size.

    (A scale of exactly 1: shorter side ``min(h, w)``, longer side capped at ``max(h, w)``; one size, so
    training draws no other.)
    """
    shorter, longer = min(height, width), max(height, width)
    model.transform.min_size = [shorter]
    model.transform.max_size = longer
    model.config.transform.min_size = [shorter]
    model.config.transform.max_size = longer


def synthetic_images(count: int, height: int, width: int, *, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic ``[3, H, W]`` images in 0..1: a colour gradient, flat rectangles and ellipses, light noise.

    Structured rather than pure noise so that a trained model finds objects: how many boxes survive the score
    threshold and NMS sets the cost of the RoI heads and of post-processing.
    """
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    images = []
    for _ in range(count):
        corners = torch.rand(4, 3, 1, 1, generator=generator) * 0.6 + 0.2
        image = corners[0] * (1 - ys) * (1 - xs) + corners[1] * (1 - ys) * xs
        image = image + corners[2] * ys * (1 - xs) + corners[3] * ys * xs
        for k in range(12):
            cy, cx, hh, hw = torch.rand(4, generator=generator).tolist()
            hh, hw = 0.03 + 0.25 * hh, 0.03 + 0.25 * hw  # half sizes, as fractions of the image
            colour = torch.rand(3, 1, 1, generator=generator)
            if k % 2:
                mask = ((ys - cy) / hh) ** 2 + ((xs - cx) / hw) ** 2 <= 1
            else:
                mask = ((ys - cy).abs() <= hh) & ((xs - cx).abs() <= hw)
            image = torch.where(mask, colour, image)
        image = image + 0.03 * (torch.rand(3, height, width, generator=generator) - 0.5)
        images.append(image.clamp(0, 1).contiguous())
    return images


def synthetic_targets(
    count: int, height: int, width: int, num_classes: int, *, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Training targets for :func:`synthetic_images`: 3 to 8 boxes of 16 px to half the image, labels 1..K.

    ``boxes`` ``[N, 4]`` (x1, y1, x2, y2 in pixels), ``labels`` ``[N]``.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    targets = []
    for _ in range(count):
        n = int(torch.randint(3, 9, (1,), generator=generator))
        limit = max(16.0, min(height, width) / 2)
        sizes = 16 + torch.rand(n, 2, generator=generator) * (limit - 16)  # (w, h)
        x1 = torch.rand(n, generator=generator) * (width - sizes[:, 0])
        y1 = torch.rand(n, generator=generator) * (height - sizes[:, 1])
        boxes = torch.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], dim=1)
        labels = torch.randint(1, max(num_classes, 2), (n,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return targets
