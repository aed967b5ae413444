"""Faster R-CNN's detection graph for export: RPN proposals and RoI-head detections, batch-vectorised.

The PyTorch path (:mod:`fpn.detection.rpn`, :mod:`fpn.detection.roi_heads`) loops over images and filters
with data-dependent Python; here every step is one tensor operation over the whole batch, so that the trace
holds for any batch size (the failure of torchvision's export with a dynamic batch: a loop unrolled at the
traced batch). Per image the arithmetic is the PyTorch path's:

* RPN, per level: top ``pre_nms_top_n_test`` logits (ONNX ``TopK``), sigmoid, decode, clip, boxes under
  ``rpn.min_size`` and scores under ``rpn.score_thresh`` masked out, NMS per (image, level) at
  ``rpn.nms_thresh``, then the ``post_nms_top_n_test`` best of each image;
* RoI heads: each proposal pooled (ONNX ``RoiAlign``) from the level of the paper's rule, box head, softmax,
  per-class decode and clip, candidates above ``score_thresh`` and at least 0.01 px, NMS per
  (image, class) at ``nms_thresh``, the ``detections_per_image`` best of each image.

Output: flat per-detection tensors with the image each belongs to (see :mod:`fpn.export.graph`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.detection.anchors import cell_anchors
from fpn.detection.rpn import flatten_level
from fpn.export.ops import (
    MASKED,
    RoIAlignOp,
    big_enough,
    clip_boxes,
    decode,
    grid_anchors,
    grouped_nms,
    shape,
    top_per_image,
)


class TwoStageGraph(nn.Module):
    """``(batch [N, 3, Hp, Wp], resized (h, w) [2]) -> (boxes [D, 4], scores [D], labels [D], levels [D], image [D])``.

    Boxes in resized-image pixels; ``model`` is a :class:`~fpn.detection.FasterRCNN` (its modules are shared,
    not copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        rpn, heads = model.rpn, model.roi_heads
        self.level_names = [lv.name for lv in rpn.levels]
        for lv in rpn.levels:
            cells = cell_anchors(rpn.anchor_generator.sizes[lv.name], rpn.anchor_generator.aspect_ratios)
            self.register_buffer(f"cells_{lv.name}", cells, persistent=False)
        self.rpn_config, self.heads_config = rpn.config, heads.config
        self.rpn_coder, self.heads_coder = rpn.box_coder, heads.box_coder
        self.pooler = heads.pooler

    def forward(self, batch: Tensor, resized: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        _, features = self.model.features(batch)  # in the networks' dtype (fp16 exports: half)
        num_images = shape(batch)[0]
        boxes, image = self.proposals(features, shape(batch)[2:], resized, num_images)
        # RoIAlign, decoding, scores and NMS in float32, whatever the networks' dtype (as the bf16 path).
        features = {name: feature.float() for name, feature in features.items()}
        return self.detections(features, boxes, image, resized, num_images)

    def proposals(
        self, features: dict[str, Tensor], padded: Tensor, resized: Tensor, num_images: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per image the RPN's proposals, flat: ``boxes [P, 4]`` and the image of each ``[P]`` (int64)."""
        cfg = self.rpn_config
        boxes, scores, groups, images = [], [], [], []
        for level, name in enumerate(self.level_names):
            feature = features[name]
            logits, deltas = self.model.rpn.head(feature)
            logits = flatten_level(logits, 1).squeeze(-1).float()  # [N, H * W * A]
            deltas = flatten_level(deltas, 4).float()  # [N, H * W * A, 4]
            anchors = grid_anchors(getattr(self, f"cells_{name}"), feature, padded)
            k = torch.clamp(shape(logits)[1], max=cfg.pre_nms_top_n_test)
            top, index = torch.topk(logits, k, dim=1)  # [N, k]
            picked = torch.gather(deltas, 1, index[..., None].expand(-1, -1, 4))
            decoded = decode(
                picked.reshape(-1, 1, 4), anchors[index.reshape(-1)], self.rpn_coder.weights, self.rpn_coder.clip
            )
            boxes.append(clip_boxes(decoded.reshape(-1, 4), resized))
            scores.append(torch.sigmoid(top).reshape(-1))
            image = torch.arange(num_images, device=feature.device)[:, None].expand_as(index).reshape(-1)
            images.append(image)
            groups.append(image * len(self.level_names) + level)
        boxes, scores, groups, images = (torch.cat(t) for t in (boxes, scores, groups, images))
        valid = big_enough(boxes, cfg.min_size) & (scores >= cfg.score_thresh)
        scores = torch.where(valid, scores, torch.full_like(scores, MASKED))
        num_groups = num_images * len(self.level_names)
        kept = grouped_nms(boxes, scores, groups, num_groups, cfg.nms_thresh, cfg.post_nms_top_n_test)
        kept = kept[top_per_image(scores[kept], images[kept], num_images, cfg.post_nms_top_n_test)]
        return boxes[kept], images[kept]

    def pool(self, features: dict[str, Tensor], boxes: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        """Each proposal pooled from its level: ``[P, C, 7, 7]``, and the level index ``k`` of each ``[P]``."""
        pooler = self.pooler
        levels = pooler.assign(boxes)
        out_h, out_w = pooler.output_size
        pooled = None
        for lv in pooler.levels:
            args = (out_h, out_w, 1.0 / lv.stride, pooler.sampling_ratio, pooler.aligned)
            if len(pooler.levels) == 1:
                return RoIAlignOp.apply(features[lv.name], boxes, image, *args), levels
            where = torch.where(levels == lv.index)[0]
            level_pooled = RoIAlignOp.apply(features[lv.name], boxes[where], image[where], *args)
            if pooled is None:
                pooled = level_pooled.new_zeros((shape(boxes)[0], lv.channels, out_h, out_w))
            pooled = pooled.index_put((where,), level_pooled)
        return pooled, levels

    def detections(
        self, features: dict[str, Tensor], proposals: Tensor, image: Tensor, resized: Tensor, num_images: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        cfg = self.heads_config
        heads = self.model.roi_heads
        pooled, roi_levels = self.pool(features, proposals, image)
        logits, deltas = heads.box_predictor(heads.box_head(pooled.to(next(heads.box_head.parameters()).dtype)))
        num_classes = heads.box_predictor.cls_score.out_features  # K + 1, background first
        boxes = decode(
            deltas.float().reshape(-1, num_classes, 4), proposals, self.heads_coder.weights, self.heads_coder.clip
        )
        boxes = clip_boxes(boxes, resized)[:, 1:].reshape(-1, 4)  # every (RoI, class) pair, background dropped
        scores = F.softmax(logits.float(), -1)[:, 1:].reshape(-1)
        foreground = num_classes - 1
        labels = torch.arange(1, num_classes, device=boxes.device)[None, :].expand(shape(proposals)[0], -1).reshape(-1)
        roi = torch.arange(shape(proposals)[0], device=boxes.device)[:, None].expand(-1, foreground).reshape(-1)
        keep = torch.where((scores > cfg.score_thresh) & big_enough(boxes, 1e-2))[0]
        boxes, scores, labels, roi = boxes[keep], scores[keep], labels[keep], roi[keep]
        images, levels = image[roi], roi_levels[roi]
        groups = images * foreground + (labels - 1)
        cap = cfg.detections_per_image
        kept = grouped_nms(boxes, scores, groups, num_images * foreground, cfg.nms_thresh, cap)
        kept = kept[top_per_image(scores[kept], images[kept], num_images, cap)]
        return boxes[kept], scores[kept], labels[kept], levels[kept], images[kept]
