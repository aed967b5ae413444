"""Models and images for the export tests (tests/export): deterministic weights whose scores spread (a fresh
model scores every class ~1/K, so that which of two near-equal boxes survives NMS is float rounding's choice)."""

from __future__ import annotations

from pathlib import Path

import torch

from fpn.data.images import open_image, pil_to_tensor
from fpn.detection import FasterRCNN
from fpn.presets import preset

IMAGES = sorted((Path(__file__).parent / "golden" / "images").glob("*.png"))


def spread_model(
    name: str = "micro-fpn", design: str | None = None, seed: int = 0, box_std: float = 0.1, **roi_heads
) -> FasterRCNN:
    """A ``name`` preset in eval mode with seeded weights, its heads' outputs widened (std 0.1 / 0.3)."""
    torch.manual_seed(seed)
    config = preset(name, design=design)
    for key, value in roi_heads.items():
        setattr(config.roi_heads, key, value)
    model = FasterRCNN(config).eval()
    with torch.no_grad():
        for p in model.roi_heads.box_predictor.parameters():
            p.normal_(0, 0.1)
        for p in model.rpn.head.parameters():
            p.normal_(0, 0.3)
        # A random box regressor's deltas (~1, through exp()) amplify float rounding far more than a trained
        # one's; box_std narrows it (tiny-fpn's 128-wide head at std 0.1 moved boxes 0.04 px between runtimes).
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, box_std)
    return model


def golden_images() -> list[torch.Tensor]:
    """The three golden pictures (237x311, 300x199, 181x256), float32 ``[3, H, W]`` in 0..1."""
    return [pil_to_tensor(open_image(path)) for path in IMAGES]
