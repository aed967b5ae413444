"""FCOS (Tian et al., 2019): an anchor-free one-stage detector on the pyramid's levels, as torchvision builds it.

Each location of each level (P3-P7 in the ``fcos-r50`` preset; any levels a design yields) predicts, through
two towers of 3x3 conv + GroupNorm + ReLU shared across levels, the scores of the classes, the distances
``(l, t, r, b)`` from the location to the box's sides (in units of the level's stride; ReLU keeps them >= 0)
and a centerness logit. Training targets are :mod:`fpn.detection.fcos_targets`' (centre sampling, size ranges
from the strides, least-area box); the losses are the focal loss on the classes, the GIoU loss on the
decoded boxes and binary cross-entropy on the centerness, each summed and divided by the number of positive
locations. Inference: ``sqrt(sigmoid(class) * sigmoid(centerness))`` per location and class, the scores
above ``score_thresh`` (0.2) and the best ``topk_candidates`` of them per level, decoded and clipped, then
class-wise NMS (0.6) and the best ``detections_per_image`` (100). Every detection keeps the level it came from.

Labels as torchvision's: the classifier has ``config.num_classes`` outputs, output ``j`` being label ``j``;
output 0 (background) is never a positive target, so a model trained here never scores it; torchvision's
COCO checkpoint has it too (COCO's 91 slots, label = category id). It is scored at inference as torchvision
scores it, so a torchvision checkpoint gives torchvision's detections; commands drop label 0 with the
placeholder slots (:mod:`fpn.detection.classes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.config import FCOSConfig, ModelConfig
from fpn.detection.anchors import AnchorGenerator
from fpn.detection.base import ClassRows
from fpn.detection.dense_heads import ConvTower, DenseDecoder, DenseDetector, Outputs
from fpn.detection.fcos_targets import assign, centerness, decode, encode, location_bounds, size_ranges
from fpn.detection.rpn import flatten_level
from fpn.levels import check_levels
from fpn.ops.losses import generalized_box_iou_loss, sigmoid_focal_loss


class FCOSHead(nn.Module):
    """Every level's maps -> class logits ``[N, A, K]``, box codes ``[N, A, 4]``, centerness logits ``[N, A]``.

    ``A`` counts the locations of all levels (row-major per level, levels fine to coarse, as the anchor
    generator orders them); the outputs are float32 whatever the networks' dtype.
    """

    def __init__(self, channels: int, num_classes: int, config: FCOSConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = ConvTower(channels, config.num_convs, norm=True)
        self.box_tower = ConvTower(channels, config.num_convs, norm=True)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        for layer in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        # Every location starts as "no object" with probability 1 - prior: the focal loss's initialisation.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - config.prior_prob) / config.prior_prob))

    def forward(self, features: Sequence[torch.Tensor]) -> Outputs:
        logits, codes, ctr = [], [], []
        for feature in features:
            cls_hidden = self.cls_tower(feature)
            box_hidden = self.box_tower(feature)
            logits.append(flatten_level(self.cls_logits(cls_hidden), self.num_classes))
            codes.append(flatten_level(F.relu(self.bbox_pred(box_hidden)), 4))
            ctr.append(flatten_level(self.centerness(box_hidden), 1))
        # float32 from here on (bf16 networks): boxes and scores need more than bf16's 8-bit mantissa.
        return torch.cat(logits, 1).float(), torch.cat(codes, 1).float(), torch.cat(ctr, 1).squeeze(-1).float()


class FCOSDecoder(DenseDecoder):
    """FCOS's scores (``sqrt(class * centerness)``), its box decoding, its assignment and its losses."""

    unit = "locations"

    def scores(self, outputs: Outputs) -> torch.Tensor:
        logits, _, ctr = outputs
        return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctr)[:, None])

    def decode(self, outputs: Outputs, where: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return decode(outputs[1][where], anchors)

    def matches(
        self, anchors: torch.Tensor, per_level: list[int], targets: Sequence[dict[str, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Per image ``[A]``: the index of the target box each location answers for, or -1."""
        lower, upper = location_bounds(anchors, per_level, self.config.size_range_scale)
        radius = self.config.center_sampling_radius
        return [assign(anchors, lower, upper, target["boxes"], radius) for target in targets]

    def losses(
        self,
        outputs: Outputs,
        anchors: torch.Tensor,
        per_level: list[int],
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """torchvision's ``FCOSHead.compute_loss``: focal, GIoU and centerness BCE sums over the positives' count."""
        cfg = self.config
        logits, codes, ctr = outputs
        classes, boxes = [], []
        for target, matched in zip(targets, self.matches(anchors, per_level, targets)):
            if len(target["labels"]) == 0:
                label = matched.new_zeros(len(matched))
                box = anchors.new_zeros((len(matched), 4))
            else:
                label = target["labels"][matched.clamp(min=0)]
                box = target["boxes"][matched.clamp(min=0)]
            label[matched < 0] = -1
            classes.append(label)
            boxes.append(box)
        gt_classes, gt_boxes = torch.stack(classes), torch.stack(boxes)
        foreground = gt_classes >= 0
        count = max(1, int(foreground.sum()))
        one_hot = torch.zeros_like(logits)
        one_hot[foreground, gt_classes[foreground]] = 1.0
        loss_cls = sigmoid_focal_loss(logits, one_hot, cfg.focal_alpha, cfg.focal_gamma, reduction="sum")
        points = anchors[None].expand(len(targets), -1, -1)[foreground]  # the positives' anchors [P, 4]
        matched_boxes = gt_boxes[foreground]
        loss_box = generalized_box_iou_loss(decode(codes[foreground], points), matched_boxes, reduction="sum")
        loss_ctr = F.binary_cross_entropy_with_logits(
            ctr[foreground], centerness(encode(points, matched_boxes)), reduction="sum"
        )
        self.last_counts = {"locations": list(per_level), "positives": self._per_level(foreground, per_level)}
        return {
            "loss_classifier": loss_cls / count,
            "loss_box_giou": loss_box / count,
            "loss_centerness": loss_ctr / count,
        }

    @staticmethod
    def _per_level(mask: torch.Tensor, per_level: list[int]) -> list[int]:
        return [int(chunk.sum()) for chunk in mask.split(per_level, dim=1)]


class FCOS(DenseDetector):
    """FCOS on any pyramid design's levels (``config.detector = "fcos"``, settings in ``config.fcos``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        levels = list(self.levels)
        # One head shared across levels: every level must carry its channels.
        check_levels(levels, consumer="FCOS head", channels=levels[0].channels)
        # One square "anchor" per location, its side the level's stride: torchvision's points and scales.
        self.anchor_generator = AnchorGenerator(levels, [lv.stride for lv in levels], [1.0])
        self.head = FCOSHead(levels[0].channels, config.num_classes, config.fcos)
        self.decoder = FCOSDecoder(levels, config.fcos)

    def class_layers(self) -> dict[str, ClassRows]:
        """The classifier's outputs: one per label, background (label 0, never trained positive) first."""
        return {"head.cls_logits.weight": ClassRows(1), "head.cls_logits.bias": ClassRows(1)}

    def positives(
        self, padded_size: Sequence[int], feature_sizes: dict[str, Sequence[int]], boxes: torch.Tensor
    ) -> dict[str, int]:
        """The locations the training assignment makes positive for ``boxes [G, 4]`` (resized-image pixels)."""
        anchors, per_level = self.anchor_generator(padded_size, feature_sizes, device=boxes.device)
        matched = self.decoder.matches(anchors, per_level, [{"boxes": boxes}])[0]
        return {lv.name: int(chunk.sum()) for lv, chunk in zip(self.levels, (matched >= 0).split(per_level))}

    def level_roles(self) -> dict[str, str]:
        """Per level, the range of ``max(l, t, r, b)`` (pixels from a location to the box's farthest side)."""
        ranges = size_ranges(self.levels, self.config.fcos.size_range_scale)
        return {lv.name: f"reach {low:g}-{high:g} px" for lv, (low, high) in zip(self.levels, ranges)}
