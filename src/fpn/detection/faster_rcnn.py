"""The detector: image -> bottom-up backbone (C2..C5) -> pyramid design (P-levels) -> RPN -> RoI heads.

``FasterRCNN(config)`` builds every part from a :class:`~fpn.config.ModelConfig` and checks that they fit
(the level contract). Whatever the pyramid design, the detector only reads ``pyramid.levels``. The trunk
(transform, backbone, pyramid, inference optimisation) is :class:`~fpn.detection.base.PyramidDetector`'s.

Calling convention (as torchvision's): ``model(images)`` in eval mode returns one dict per image with
``boxes`` [D, 4] (xyxy, original pixels), ``scores`` [D], ``labels`` [D] (1..K) and ``levels`` [D] (the
pyramid level k of the RoI that produced each detection); ``model(images, targets)`` in train mode returns
a dict of losses. Images are [3, H, W] RGB tensors in 0..1 (float) or 0..255 (uint8), or PIL images, of
any size; anything else is refused with an :class:`~fpn.errors.ImageError` (see :mod:`fpn.detection.transform`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fpn.config import ModelConfig
from fpn.detection.base import ClassRows, PyramidDetector
from fpn.detection.roi_heads import RoIHeads
from fpn.detection.rpn import RegionProposalNetwork
from fpn.detection.transform import ImageBatch


class FasterRCNN(PyramidDetector):
    """Faster R-CNN with any of the paper's pyramid designs (``config.pyramid.design``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.rpn = RegionProposalNetwork(self.levels, config.anchors.sizes, config.anchors.aspect_ratios, config.rpn)
        self.roi_heads = RoIHeads(self.levels, config.num_classes, config.roi_heads)

    def _networks(self) -> tuple[nn.Module, ...]:
        return (*super()._networks(), self.rpn.head, self.roi_heads.box_head, self.roi_heads.box_predictor)

    def optimize_for_inference(self, dtype: torch.dtype = torch.float32, winograd: bool = True) -> FasterRCNN:
        """:meth:`PyramidDetector.optimize_for_inference`, and the box head reads the pooled RoIs channels-last."""
        super().optimize_for_inference(dtype, winograd)
        self.roi_heads.box_head.take_channels_last(self.roi_heads.pooler.levels[0].channels)
        return self

    def class_layers(self) -> dict[str, ClassRows]:
        """The box predictor's class scores (background first) and class-specific boxes (4 rows per class)."""
        predictor = "roi_heads.box_predictor"
        return {
            f"{predictor}.cls_score.weight": ClassRows(1),
            f"{predictor}.cls_score.bias": ClassRows(1),
            f"{predictor}.bbox_pred.weight": ClassRows(4),
            f"{predictor}.bbox_pred.bias": ClassRows(4),
        }

    def stages(self) -> tuple[str, ...]:
        return ("rpn", "roi_heads")

    def anchor_sizes(self) -> dict[str, tuple[float, ...]]:
        return self.rpn.anchor_generator.describe()

    def level_counts(self) -> dict[str, dict[str, int]]:
        """Anchors, proposals kept after NMS, and RoIs pooled from each level in the last forward."""
        counts = self.last_counts
        pooled = {lv.name: n for lv, n in zip(self.roi_heads.pooler.levels, counts.get("rois", []))}
        return {
            lv.name: {
                "anchors": counts["anchors"][i] if counts else 0,
                "proposals": counts["proposals"][i] if counts else 0,
                "rois": pooled.get(lv.name, 0),
            }
            for i, lv in enumerate(self.levels)
        }

    def positives(
        self, padded_size: Sequence[int], feature_sizes: dict[str, Sequence[int]], boxes: torch.Tensor
    ) -> dict[str, int]:
        """The RPN's positive anchors (its 0.7 / 0.3 matcher, each box keeping its best anchors)."""
        return self.rpn.positives(padded_size, feature_sizes, boxes)

    def level_roles(self) -> dict[str, str]:
        """The RoI sizes (sqrt of area, resized-image pixels) the paper's rule pools from each level."""
        cfg = self.config.roi_heads
        pool = [lv.index for lv in self.roi_heads.pooler.levels]
        roles = {}
        for lv in self.levels:
            low = cfg.canonical_size * 2.0 ** (lv.index - cfg.canonical_level)
            lower = "0" if lv.index == pool[0] else f"{low:.0f}"
            upper = "inf" if lv.index == pool[-1] else f"{2 * low:.0f}"
            roles[lv.name] = f"RoIs {lower}-{upper} px" if lv.index in pool else "no RoIs (RPN only)"
        return roles

    def run_head(
        self,
        features: dict[str, torch.Tensor],
        batch: ImageBatch,
        targets: Sequence[dict[str, torch.Tensor]] | None,
    ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        proposals, _, rpn_losses, rpn_counts = self.rpn(features, batch.tensors.shape[-2:], batch.image_sizes, targets)
        detections, roi_losses, roi_counts = self.roi_heads(features, proposals, batch.image_sizes, targets)
        self.last_counts = {**rpn_counts, **roi_counts}
        return {**rpn_losses, **roi_losses} if targets is not None else detections
