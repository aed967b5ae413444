"""Models and images for the export tests (tests/export): deterministic weights whose scores spread (a fresh
model scores every class ~1/K, so that which of two near-equal boxes survives NMS is float rounding's choice)."""

from __future__ import annotations

from pathlib import Path

import torch

from fpn.data.images import open_image, pil_to_tensor
from fpn.detection import FasterRCNN
from fpn.detection.fcos import FCOS
from fpn.detection.retinanet import RetinaNet
from fpn.export.check import SCORE_TOL, below_cap_ties, box_tolerance, compare
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


def dense_model(name: str, seed: int = 0, cls_std: float = 0.05, box_std: float = 0.01, **section) -> torch.nn.Module:
    """A one-stage preset (``tiny-fcos``, ``tiny-retinanet``) in eval mode with seeded weights, its classifier
    widened: a fresh head scores every location at the prior (0.01, below every threshold), so no detection;
    at std 0.05 a few dozen (location, class) pairs per image score far above the threshold and the rest far
    below, and box_std 0.01 keeps the box codes near the bias (boxes of a stride or two). ``section`` sets the
    detector's inference settings (``score_thresh``, ``topk_candidates``, ``detections_per_image``)."""
    torch.manual_seed(seed)
    config = preset(name)
    model = (FCOS if config.detector == "fcos" else RetinaNet)(config)
    for key, value in section.items():
        setattr(model.output_config, key, value)
    with torch.no_grad():
        model.head.cls_logits.weight.normal_(0, cls_std)
        model.head.bbox_pred.weight.normal_(0, box_std)
    return model.eval()


def assert_same(onnx_model, model, images: list[torch.Tensor]) -> int:
    """Each image's detections, exported (as a batch where sizes agree) and in PyTorch: the same set, the same
    levels; returns how many. PyTorch runs each image alone: a batch of several sizes is padded to the largest,
    which moves the coarse levels' anchors (their stride is the padded size // the map's)."""
    with torch.no_grad():
        reference = [model([image])[0] for image in images]
    total = 0
    for image, ours, theirs in zip(images, onnx_model(images), reference):
        tol = box_tolerance(model.transform, tuple(image.shape[-2:]))
        cap = model.output_config.detections_per_image
        difference = compare(ours, theirs, tol, SCORE_TOL, cap)
        assert difference.problem is None, (tuple(image.shape), difference)
        total += len(ours["boxes"])
        ours, theirs = below_cap_ties(ours, theirs, cap, SCORE_TOL)  # the levels of the compared detections
        assert torch.equal(ours["levels"].sort().values, theirs["levels"].sort().values)
    return total
