"""RetinaNet (Lin et al., 2017): a one-stage detector with anchors on the pyramid's levels, as torchvision builds it.

Each cell of each level (P3-P7 in the ``retinanet-r50`` preset; any levels a design yields) carries ``A = 9``
anchors: three sizes an octave apart in thirds (``size * 2^(i/3)``, truncated to whole pixels as torchvision
does) times three aspect ratios. Two subnets shared across levels, ``num_convs`` 3x3 conv + ReLU each (+
GroupNorm with ``head_norm: gn``), end in a 3x3 conv giving ``A * K`` class logits (the classification subnet,
its bias at ``-log((1 - p) / p)`` so every anchor starts as background with probability ``1 - p``) and ``4A``
box deltas (the regression subnet; ``BoxCoder(1, 1, 1, 1)``).

Training matches anchors to boxes by IoU (>= 0.5 foreground, < 0.4 background, in between ignored; each box
also keeps its best anchors) and sums, per image, the focal loss (alpha 0.25, gamma 2) over the non-ignored
anchors' classes and the L1 loss of the foreground anchors' deltas, each divided by the image's foreground
count, then averages over the images (torchvision's ``RetinaNetHead.compute_loss``). Inference: per level the
sigmoid scores above ``score_thresh`` (0.05), the ``topk_candidates`` (1000) best of them decoded and clipped;
then class-wise NMS (0.5) and the best ``detections_per_image`` (300). Every detection keeps its level.

Labels as torchvision's: the classifier has ``config.num_classes`` outputs per anchor, output ``j`` being label
``j``; output 0 (background) is never a positive target, so a model trained here learns to score it low.
torchvision's COCO checkpoint has COCO's 91 slots (label = category id), and output 0 is scored at inference
as torchvision scores it, so its checkpoint gives torchvision's detections; commands drop label 0 with the
placeholder slots (:mod:`fpn.detection.classes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.config import ModelConfig, RetinaNetConfig
from fpn.detection.anchors import AnchorGenerator, positive_anchors
from fpn.detection.base import ClassRows
from fpn.detection.dense_heads import ConvTower, DenseDecoder, DenseDetector
from fpn.detection.rpn import flatten_level
from fpn.levels import Level, check_levels
from fpn.ops import BoxCoder, Matcher, box_iou
from fpn.ops.losses import sigmoid_focal_loss


def octave_sizes(sizes: Sequence[float], scales_per_octave: int) -> list[int]:
    """Each base size and its ``scales_per_octave - 1`` steps up to the next octave, truncated to whole pixels.

    torchvision's ``(x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3)))``: 32 -> 32, 40, 50.
    """
    return [int(size * 2 ** (i / scales_per_octave)) for size in sizes for i in range(scales_per_octave)]


class RetinaNetHead(nn.Module):
    """Every level's maps -> class logits ``[N, T, K]`` and box deltas ``[N, T, 4]``.

    ``T`` counts the anchors of all levels, ordered as the anchor generator orders them (levels fine to coarse,
    cells row-major, then the ``A`` anchors of a cell); the outputs are float32 whatever the networks' dtype.
    """

    def __init__(self, channels: int, num_anchors: int, num_classes: int, config: RetinaNetConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        norm = config.head_norm == "gn"
        self.cls_subnet = ConvTower(channels, config.num_convs, norm=norm)
        self.box_subnet = ConvTower(channels, config.num_convs, norm=norm)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for layer in (self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        # Every anchor starts as "no object" with probability 1 - prior: without it the ~100k background anchors'
        # loss swamps the first iterations (the paper's section 4.1).
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - config.prior_prob) / config.prior_prob))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas = [], []
        for feature in features:
            logits.append(flatten_level(self.cls_logits(self.cls_subnet(feature)), self.num_classes))
            deltas.append(flatten_level(self.bbox_pred(self.box_subnet(feature)), 4))
        # float32 from here on (bf16 networks): boxes and scores need more than bf16's 8-bit mantissa.
        return torch.cat(logits, 1).float(), torch.cat(deltas, 1).float()


class RetinaNetDecoder(DenseDecoder):
    """The head's outputs -> detections (eval: sigmoid scores, ``BoxCoder(1, 1, 1, 1)`` deltas on the anchors),
    or the losses against targets (training). No parameters; ``fpn bench`` times it as a stage."""

    def __init__(self, levels: Sequence[Level], config: RetinaNetConfig) -> None:
        super().__init__(levels, config)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(config.fg_iou_thresh, config.bg_iou_thresh, allow_low_quality_matches=True)

    def scores(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.sigmoid(outputs[0])

    def decode(self, outputs: tuple[torch.Tensor, ...], where: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.box_coder.decode(outputs[1][where], anchors).view(-1, 4)

    def losses(
        self,
        outputs: tuple[torch.Tensor, torch.Tensor],
        anchors: torch.Tensor,
        per_level: list[int],
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Focal loss on the classes and L1 on the foreground deltas, each over the image's foreground count,
        averaged over the images (torchvision's ``RetinaNetHead.compute_loss``)."""
        cfg = self.config
        logits, deltas = outputs
        matched = torch.stack([self.matcher(box_iou(target["boxes"], anchors)) for target in targets])  # [N, T]
        foreground = matched >= 0
        valid = matched != Matcher.BETWEEN_THRESHOLDS
        count = foreground.sum(dim=1).clamp(min=1).to(logits.dtype)  # [N]
        one_hot = torch.zeros_like(logits)
        loss_box = logits.new_zeros(len(targets))
        for image, target in enumerate(targets):
            fg = torch.where(foreground[image])[0]
            gt = matched[image, fg]
            one_hot[image, fg, target["labels"][gt]] = 1.0
            wanted = self.box_coder.encode(target["boxes"][gt], anchors[fg])
            loss_box[image] = F.l1_loss(deltas[image, fg], wanted, reduction="sum")
        focal = sigmoid_focal_loss(logits, one_hot, cfg.focal_alpha, cfg.focal_gamma)  # [N, T, K]
        loss_cls = (focal.sum(dim=2) * valid).sum(dim=1)
        positives = [int(chunk.sum()) for chunk in foreground.split(per_level, dim=1)]
        self.last_counts = {"anchors": list(per_level), "positives": positives}
        return {"loss_classifier": (loss_cls / count).mean(), "loss_box_reg": (loss_box / count).mean()}


class RetinaNet(DenseDetector):
    """RetinaNet on any pyramid design's levels (``config.detector = "retinanet"``; settings: ``config.retinanet``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        levels = list(self.levels)
        # One head shared across levels: every level must carry its channels and anchor count.
        check_levels(levels, consumer="RetinaNet head", channels=levels[0].channels)
        cfg = config.retinanet
        sizes = octave_sizes(config.anchors.sizes, cfg.scales_per_octave)
        self.anchor_generator = AnchorGenerator(levels, sizes, config.anchors.aspect_ratios)
        self.head = RetinaNetHead(levels[0].channels, self.anchor_generator.num_anchors, config.num_classes, cfg)
        self.decoder = RetinaNetDecoder(levels, cfg)

    def class_layers(self) -> dict[str, ClassRows]:
        """The classifier's outputs: per anchor (``A`` groups), one per label, background (label 0) first."""
        rows = ClassRows(1, background=True, groups=self.anchor_generator.num_anchors)
        return {"head.cls_logits.weight": rows, "head.cls_logits.bias": rows}

    def anchor_sizes(self) -> dict[str, tuple[float, ...]]:
        return self.anchor_generator.describe()

    def positives(
        self, padded_size: Sequence[int], feature_sizes: dict[str, Sequence[int]], boxes: torch.Tensor
    ) -> dict[str, int]:
        """The anchors the training matcher (0.5 / 0.4, each box keeping its best) makes foreground."""
        return positive_anchors(self.anchor_generator, self.decoder.matcher, padded_size, feature_sizes, boxes)
