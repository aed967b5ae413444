"""Fast R-CNN heads on the pyramid: multi-scale RoIAlign, two FC layers, class scores and per-class boxes.

Each proposal is pooled (7x7) from the level the paper's rule assigns it,
``k = floor(k0 + log2(sqrt(wh) / 224))`` with ``k0 = 4``, clamped to the levels the pyramid has (a
single-map model pools everything from its one map). Training samples 512 RoIs per image at a quarter
positive (IoU >= 0.5, ground-truth boxes added to the proposals); inference keeps class scores above
0.05, NMS 0.5 per class, 100 detections per image, and records each detection's level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.config import RoIHeadsConfig
from fpn.levels import Level
from fpn.ops import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    MultiScaleRoIAlign,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)


class TwoMLPHead(nn.Module):
    """``[R, C, 7, 7] -> [R, representation]``: flatten, FC + ReLU, FC + ReLU."""

    def __init__(self, in_features: int, representation: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation)
        self.fc7 = nn.Linear(representation, representation)
        self.channels_last = False  # fc6's inputs in (C, h, w) order, as torchvision's checkpoints hold them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1).flatten(start_dim=1) if self.channels_last else x.flatten(start_dim=1)
        return F.relu(self.fc7(F.relu(self.fc6(x))))

    @torch.no_grad()
    def take_channels_last(self, channels: int) -> None:
        """Reorder fc6's inputs to ``(h, w, C)`` (inference only: the state dict no longer has torchvision's order).

        Inference pools RoIs channels-last (:mod:`fpn.ops.roi_align_inference`); flattening that layout in
        ``(C, h, w)`` order copies every RoI's features (51 MB for r50-fpn's 1000 RoIs of 256 x 7 x 7), while in
        ``(h, w, C)`` order the flatten is a view. Other layouts still give the same values, through a copy.
        """
        if self.channels_last:
            return
        weight = self.fc6.weight
        rows = weight.shape[0]
        self.fc6.weight.data = weight.view(rows, channels, -1).transpose(1, 2).reshape(rows, -1)
        self.channels_last = True


class BoxPredictor(nn.Module):
    """``[R, representation] -> (class logits [R, K+1], per-class deltas [R, 4(K+1)])``."""

    def __init__(self, representation: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(representation, num_classes)
        self.bbox_pred = nn.Linear(representation, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Detections from proposals and pyramid features; losses when targets are given."""

    def __init__(self, levels: Sequence[Level], num_classes: int, config: RoIHeadsConfig) -> None:
        super().__init__()
        self.config = config
        # RoIs are pooled from p2..p5 only: P6 exists for the RPN's largest anchors (as in the paper).
        pool_levels = [lv for lv in levels if lv.index <= 5] or list(levels[:1])
        self.pooler = MultiScaleRoIAlign(
            pool_levels,
            output_size=config.pooler_size,
            sampling_ratio=config.sampling_ratio,
            canonical_size=config.canonical_size,
            canonical_level=config.canonical_level,
        )
        channels = pool_levels[0].channels
        self.box_head = TwoMLPHead(channels * config.pooler_size**2, config.representation_size)
        self.box_predictor = BoxPredictor(config.representation_size, num_classes)
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.matcher = Matcher(config.fg_iou_thresh, config.bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(config.batch_size_per_image, config.positive_fraction)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor], dict[str, list[int]]]:
        """Returns detections per image (boxes in resized-image pixels), losses, and per-level RoI counts."""
        if targets is not None:
            proposals, labels, regression_targets = self.select_training_samples(proposals, targets)
        pooled, roi_levels = self.pooler(features, proposals)
        class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        level_ids = [lv.index for lv in self.pooler.levels]
        counts = {"rois": [int((roi_levels == k).sum()) for k in level_ids]}
        if targets is not None:
            return [], self.losses(class_logits, box_deltas, labels, regression_targets), counts
        return self.postprocess(class_logits, box_deltas, proposals, roi_levels, image_sizes), {}, counts

    def select_training_samples(
        self, proposals: list[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Add ground truth to the proposals, label them by IoU, and sample 512 per image (a quarter positive)."""
        all_labels, matched_gt, sampled_proposals = [], [], []
        for boxes, target in zip(proposals, targets):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            boxes = torch.cat([boxes, gt_boxes])
            if gt_boxes.numel() == 0:
                matched = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                gt_boxes = torch.zeros((1, 4), dtype=boxes.dtype, device=boxes.device)
            else:
                match = self.matcher(box_iou(gt_boxes, boxes))
                matched = match.clamp(min=0)
                labels = gt_labels[matched].to(torch.int64)
                labels[match == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[match == Matcher.BETWEEN_THRESHOLDS] = -1
            all_labels.append(labels)
            matched_gt.append((boxes, gt_boxes[matched]))
        pos_masks, neg_masks = self.sampler(all_labels)
        labels_out, targets_out = [], []
        for (boxes, gt), labels, pos, neg in zip(matched_gt, all_labels, pos_masks, neg_masks):
            keep = torch.where(pos | neg)[0]
            sampled_proposals.append(boxes[keep])
            labels_out.append(labels[keep])
            targets_out.append(self.box_coder.encode(gt[keep], boxes[keep]))
        return sampled_proposals, torch.cat(labels_out), torch.cat(targets_out)

    def losses(
        self, class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy on classes; smooth-L1 (beta 1/9) on the true class's deltas of positive RoIs."""
        classifier = F.cross_entropy(class_logits, labels)
        pos = torch.where(labels > 0)[0]
        deltas = box_deltas.reshape(len(labels), -1, 4)[pos, labels[pos]]
        box_loss = F.smooth_l1_loss(deltas, targets[pos], beta=1 / 9, reduction="sum") / max(labels.numel(), 1)
        return {"loss_classifier": classifier, "loss_box_reg": box_loss}

    def postprocess(
        self,
        class_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        proposals: list[torch.Tensor],
        roi_levels: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Per-class boxes above the score threshold, NMS per class, top detections; each keeps its RoI's level."""
        cfg = self.config
        num_classes = class_logits.shape[-1]
        counts = [len(p) for p in proposals]
        # Decode and score in fp32 even under bf16 autocast: bf16 has 8 bits of mantissa, i.e. a box edge
        # near x = 1000 could only land on multiples of 4-8 px.
        boxes_all = self.box_coder.decode(box_deltas.float(), torch.cat(proposals).float()).split(counts)
        scores_all = F.softmax(class_logits.float(), -1).split(counts)
        results = []
        for boxes, scores, levels, size in zip(boxes_all, scores_all, roi_levels.split(counts), image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            levels = levels.view(-1, 1).expand_as(scores)
            # Drop the background column, then treat every (RoI, class) pair as its own candidate.
            boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
            labels, levels = labels[:, 1:].reshape(-1), levels[:, 1:].reshape(-1)
            keep = torch.where(scores > cfg.score_thresh)[0]
            boxes, scores, labels, levels = boxes[keep], scores[keep], labels[keep], levels[keep]
            keep = remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels, levels = boxes[keep], scores[keep], labels[keep], levels[keep]
            keep = batched_nms(boxes, scores, labels, cfg.nms_thresh, max_keep=cfg.detections_per_image)
            results.append(
                {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "levels": levels[keep]}
            )
        return results
