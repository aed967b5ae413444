"""The region proposal network: a small head shared by every pyramid level, proposals, and its losses.

At each cell of each level, a 3x3 conv (+ReLU) feeds two 1x1 convs: ``A`` objectness logits and
``4A`` box deltas for the level's ``A`` anchors. Proposals are the decoded anchors, top-n per level by
objectness, clipped, NMS'd per level (0.7), top-n overall. Training labels anchors with the 0.7 / 0.3
IoU matcher (each ground truth also keeps its best anchors), samples 256 per image at half positive,
and sums binary cross-entropy with smooth-L1 (beta 1/9) on the positives' deltas.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.config import RPNConfig
from fpn.detection.anchors import AnchorGenerator, positive_anchors
from fpn.layers import conv_relu
from fpn.levels import Level, check_levels
from fpn.ops import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)


class RPNHead(nn.Module):
    """Per level: ``[N, C, H, W] -> (logits [N, A, H, W], deltas [N, 4A, H, W])``, weights shared across levels."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = conv_relu(self.conv, feature)  # one oneDNN kernel in CPU inference
        return self.cls_logits(hidden), self.bbox_pred(hidden)

    def flat_outputs(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every level at once: ``(logits [N, total], deltas [N, total, 4])``, in :func:`flatten_level`'s order.

        The two 1x1 convolutions are one matrix product per level (``[N, cells, C] @ [C, 5A]``): for a narrow
        pyramid at ~320 px, ten small convolutions and their reorderings cost more than the products. Only the
        narrow outputs are concatenated (concatenating the levels' cells first copies every map once more).
        The values are the convolutions' up to float rounding.
        """
        weight = torch.cat([self.cls_logits.weight, self.bbox_pred.weight]).flatten(1)  # [A + 4A, C]
        bias = torch.cat([self.cls_logits.bias, self.bbox_pred.bias])
        outputs = []
        for feature in features:
            hidden = conv_relu(self.conv, feature)
            num, channels = hidden.shape[:2]
            # [N, H * W, C]: a view for channels-last maps.
            outputs.append(F.linear(hidden.permute(0, 2, 3, 1).reshape(num, -1, channels), weight, bias))
        outputs = torch.cat(outputs, dim=1)
        anchors = self.cls_logits.out_channels
        return outputs[..., :anchors].reshape(num, -1), outputs[..., anchors:].reshape(num, -1, 4)


def flatten_level(tensor: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """``[N, A * K, H, W] -> [N, H * W * A, K]``: cells row-major, then anchors, as the anchor generator orders them."""
    n, _, h, w = tensor.shape
    return tensor.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor)


class RegionProposalNetwork(nn.Module):
    """Proposals from pyramid features; losses when targets are given."""

    def __init__(
        self,
        levels: Sequence[Level],
        anchor_sizes: Sequence[float],
        aspect_ratios: Sequence[float],
        config: RPNConfig,
    ) -> None:
        super().__init__()
        levels = list(levels)
        # One head shared across levels: every level must have its channels and anchor count.
        check_levels(levels, consumer="RPN head", channels=levels[0].channels)
        self.levels = tuple(levels)
        self.anchor_generator = AnchorGenerator(levels, anchor_sizes, aspect_ratios)
        self.head = RPNHead(levels[0].channels, self.anchor_generator.num_anchors)
        self.config = config
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(config.fg_iou_thresh, config.bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(config.batch_size_per_image, config.positive_fraction)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        padded_size: Sequence[int],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor], dict[str, list[int]]]:
        """Returns per-image proposals ``[P_i, 4]`` (resized-image pixels), their scores, losses, and counts.

        The counts (anchors per level, proposals per level) feed ``fpn show``.
        """
        names = [lv.name for lv in self.levels]
        if self.training:
            logits, deltas = [], []
            for name in names:
                lg, dl = self.head(features[name])
                logits.append(flatten_level(lg, 1))
                deltas.append(flatten_level(dl, 4))
            objectness, pred_deltas = torch.cat(logits, dim=1).squeeze(-1), torch.cat(deltas, dim=1)
        else:
            objectness, pred_deltas = self.head.flat_outputs([features[name] for name in names])
        # fp32 from here on, also under bf16 autocast: proposal boxes need more than bf16's 8-bit mantissa.
        objectness, pred_deltas = objectness.float(), pred_deltas.float()  # [N, total], [N, total, 4]
        feature_sizes = {name: features[name].shape[-2:] for name in names}
        anchors, per_level = self.anchor_generator(padded_size, feature_sizes, device=objectness.device)
        boxes, scores, levels = self.filter_proposals(
            pred_deltas.detach(), anchors, objectness.detach(), image_sizes, per_level
        )
        losses: dict[str, torch.Tensor] = {}
        if targets is not None:
            losses = self.losses(objectness, pred_deltas, anchors, targets)
        counts = {
            "anchors": per_level,
            "proposals": [sum(int((lv == i).sum()) for lv in levels) for i in range(len(names))],
        }
        return boxes, scores, losses, counts

    def filter_proposals(
        self,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        objectness: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        per_level: list[int],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Top-n per level, decode, clip, drop tiny and low-scoring boxes, NMS per level, top-n per image.

        ``pred_deltas [N, total, 4]`` and ``objectness [N, total]`` are per anchor (``anchors [total, 4]``).
        Only the top-n candidates are decoded (decoding is per box, so this is the same as decoding all
        anchors and selecting after): 5 x 1000 of tiny-fpn's 42k anchors per image in training.
        """
        cfg = self.config
        pre_n = cfg.pre_nms_top_n_train if self.training else cfg.pre_nms_top_n_test
        post_n = cfg.post_nms_top_n_train if self.training else cfg.post_nms_top_n_test
        device = objectness.device
        top_idx, top_logits, kept_per_level, offset = [], [], [], 0
        for chunk in objectness.split(per_level, dim=1):
            top = chunk.topk(min(pre_n, chunk.shape[1]), dim=1)
            top_idx.append(top.indices + offset)
            top_logits.append(top.values)
            kept_per_level.append(top.indices.shape[1])
            offset += chunk.shape[1]
        top_idx = torch.cat(top_idx, dim=1)
        probs = torch.sigmoid(torch.cat(top_logits, dim=1))
        num_images, candidates = top_idx.shape
        top_deltas = pred_deltas.gather(1, top_idx[:, :, None].expand(-1, -1, 4))
        boxes_all = self.box_coder.decode(top_deltas.reshape(-1, 4), anchors.index_select(0, top_idx.reshape(-1)))
        boxes_all = boxes_all.view(num_images, candidates, 4)
        # Candidates come level by level, the same count from each image.
        level_ids = torch.arange(len(kept_per_level), device=device).repeat_interleave(
            torch.tensor(kept_per_level, device=device)
        )
        levels_all = level_ids.expand(num_images, -1)
        out_boxes, out_scores, out_levels = [], [], []
        for boxes, scores, levels, size in zip(boxes_all, probs, levels_all, image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, cfg.min_size)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = torch.where(scores >= cfg.score_thresh)[0]
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes, scores, levels, cfg.nms_thresh, max_keep=post_n)
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_levels.append(levels[keep])
        return out_boxes, out_scores, out_levels

    def positives(
        self, padded_size: Sequence[int], feature_sizes: dict[str, Sequence[int]], boxes: torch.Tensor
    ) -> dict[str, int]:
        """Per level, the anchors the matcher makes positive for ``boxes [G, 4]`` (resized-image pixels)."""
        return positive_anchors(self.anchor_generator, self.matcher, padded_size, feature_sizes, boxes)

    def losses(
        self,
        objectness: torch.Tensor,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Objectness BCE and box smooth-L1 over 256 sampled anchors per image (torchvision's recipe)."""
        labels, matched_gt = [], []
        for target in targets:
            gt = target["boxes"]
            if gt.numel() == 0:
                labels.append(torch.zeros(len(anchors), device=anchors.device))
                matched_gt.append(torch.zeros_like(anchors))  # no positives: never read
                continue
            matched = self.matcher(box_iou(gt, anchors))
            label = (matched >= 0).to(torch.float32)
            label[matched == Matcher.BELOW_LOW_THRESHOLD] = 0.0
            label[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(label)
            matched_gt.append(gt[matched.clamp(min=0)])
        pos_masks, neg_masks = self.sampler(labels)
        pos = torch.where(torch.cat(pos_masks))[0]
        sampled = torch.where(torch.cat(pos_masks) | torch.cat(neg_masks))[0]
        labels_cat = torch.cat(labels)
        # Regression targets of the sampled positives only (<= 128 per image, not every anchor): encoding is
        # per box, so the values are those of encoding all anchors and selecting after.
        pos_anchors = anchors[pos % len(anchors)]
        regression_targets = self.box_coder.encode(torch.cat(matched_gt)[pos], pos_anchors)
        box_loss = F.smooth_l1_loss(
            pred_deltas.reshape(-1, 4)[pos], regression_targets, beta=1 / 9, reduction="sum"
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.reshape(-1)[sampled], labels_cat[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}
