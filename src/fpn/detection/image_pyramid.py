"""Design (a) of the seed: the featurized image pyramid, at test time.

The ``single-map`` model is run on the image at several scales (shorter side ``test_scales``); each
scale's detections are mapped to the original pixels and merged by per-class NMS. Every scale pays for a
full backbone pass, which is the paper's point: accurate, but compute and memory grow with each scale.
Training uses one scale at a time (multi-scale training), as the paper notes image pyramids are used at
test time only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fpn.ops import batched_nms


def merge_scales(
    per_scale: Sequence[list[dict[str, torch.Tensor]]], nms_thresh: float, max_detections: int
) -> list[dict[str, torch.Tensor]]:
    """Merge detections of the same images found at several scales (per-class NMS, best first)."""
    merged = []
    for per_image in zip(*per_scale):
        cat = {key: torch.cat([det[key] for det in per_image]) for key in per_image[0]}
        keep = batched_nms(cat["boxes"], cat["scores"], cat["labels"], nms_thresh, max_keep=max_detections)
        merged.append({key: value[keep] for key, value in cat.items()})
    return merged


def detect_multiscale(
    detect: Callable[[int], list[dict[str, torch.Tensor]]],
    scales: Sequence[int],
    nms_thresh: float,
    max_detections: int,
) -> list[dict[str, torch.Tensor]]:
    """Run ``detect(shorter_side)`` for each scale and merge the results."""
    return merge_scales([detect(scale) for scale in scales], nms_thresh, max_detections)
