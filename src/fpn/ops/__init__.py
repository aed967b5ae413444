"""Detection ops in plain PyTorch: box geometry and coding, NMS, RoIAlign, multi-scale pooling, matching.

Network building blocks (norms, fused convolution + ReLU, Winograd) are in :mod:`fpn.layers`.

Everything here reproduces torchvision's semantics (checked against golden files produced by it) without
importing torchvision, whose compiled ops are not available everywhere this package runs.
"""

from __future__ import annotations

from fpn.ops.boxes import BoxCoder, box_area, box_iou, clip_boxes_to_image, remove_small_boxes
from fpn.ops.matching import BalancedPositiveNegativeSampler, Matcher
from fpn.ops.nms import batched_nms, nms
from fpn.ops.poolers import MultiScaleRoIAlign, assign_levels
from fpn.ops.roi_align import boxes_to_rois, roi_align

__all__ = [
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "Matcher",
    "MultiScaleRoIAlign",
    "assign_levels",
    "batched_nms",
    "box_area",
    "box_iou",
    "boxes_to_rois",
    "clip_boxes_to_image",
    "nms",
    "remove_small_boxes",
    "roi_align",
]
