"""The one-stage detectors' graph for export (FCOS, RetinaNet): dense head, per-level top-k, NMS, batch-vectorised.

The PyTorch path (:class:`fpn.detection.dense_heads.DenseDecoder`) loops over images and levels and keeps
the scores above the threshold with a data-dependent mask before its top-k; here each level is one batched
tensor operation, so the trace holds for any image size and batch. Per image the arithmetic is the PyTorch
path's:

* per level, the head on that level's map (the head is shared across levels, so running it level by level
  is running it once on all), the scores (RetinaNet: ``sigmoid(logit)``; FCOS:
  ``sqrt(sigmoid(logit) * sigmoid(centerness))``), per (location, class);
* the scores at or under ``score_thresh`` masked out, then the ``topk_candidates`` best (ONNX ``TopK`` over
  ``min(topk, L * K)``; the masked ones never reach the kept set: they are dropped right after);
* the candidates' boxes decoded on the anchors (RetinaNet: ``BoxCoder(1, 1, 1, 1)`` deltas, exp clamped at
  ``log(1000 / 16)``; FCOS: ``(l, t, r, b)`` times the stride, ``BoxLinearCoder(normalize_by_size=True)``),
  the anchors generated in-graph from each map's size (stride = padded size // map size), then clipped;
* class-wise NMS per (image, class) at ``nms_thresh`` over all levels, the ``detections_per_image`` best of
  each image; each detection keeps the level it came from.

Output: flat per-detection tensors with the image each belongs to (see :mod:`fpn.export.graph`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fpn.detection.anchors import cell_anchors
from fpn.detection.fcos_targets import decode as fcos_decode
from fpn.export.ops import MASKED, clip_boxes, decode, grid_anchors, grouped_nms, shape, top_per_image


class OneStageGraph(nn.Module):
    """``(batch [N, 3, Hp, Wp], resized (h, w) [2]) -> (boxes [D, 4], scores [D], labels [D], levels [D], image [D])``.

    Boxes in resized-image pixels; ``model`` is a :class:`~fpn.detection.dense_heads.DenseDetector` (FCOS or
    RetinaNet; its modules are shared, not copied). A subclass says how a level's head outputs score
    (:meth:`scores`) and decode (:meth:`decode`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        generator = model.anchor_generator
        self.level_names = [lv.name for lv in model.levels]
        self.level_index = [lv.index for lv in model.levels]
        for name in self.level_names:
            self.register_buffer(f"cells_{name}", cell_anchors(generator.sizes[name], generator.aspect_ratios),
                                 persistent=False)  # fmt: skip
        self.config = model.decoder.config  # score_thresh, topk_candidates, nms_thresh, detections_per_image

    def scores(self, outputs: tuple[Tensor, ...]) -> Tensor:
        """One level's head outputs (``[N, L, ...]``) -> probabilities ``[N, L, K]``."""
        raise NotImplementedError

    def decode(self, outputs: tuple[Tensor, ...], image: Tensor, location: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``[C, 4]`` of the candidates at (``image [C]``, ``location [C]``), their ``anchors [C, 4]``."""
        raise NotImplementedError

    def forward(self, batch: Tensor, resized: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        cfg = self.config
        _, features = self.model.features(batch)
        padded, num_images = shape(batch)[2:], shape(batch)[0]
        boxes, scores, labels, levels, images = [], [], [], [], []
        for name, index in zip(self.level_names, self.level_index):
            feature = features[name]
            outputs = self.model.head([feature])  # this level's [N, L, ...] (float32)
            probabilities = self.scores(outputs)  # [N, L, K]
            num_classes = shape(probabilities)[2]
            flat = probabilities.flatten(1)  # [N, L * K], location-major as level_candidates flattens
            flat = torch.where(flat > cfg.score_thresh, flat, torch.full_like(flat, MASKED))
            k = torch.clamp(shape(flat)[1], max=cfg.topk_candidates)
            top, where = torch.topk(flat, k, dim=1)  # [N, k]
            image = torch.arange(num_images, device=batch.device)[:, None].expand_as(where).reshape(-1)
            top, where = top.reshape(-1), where.reshape(-1)
            valid = torch.where(top > cfg.score_thresh)[0]  # the masked ones (<= threshold) are no candidates
            top, where, image = top[valid], where[valid], image[valid]
            location = torch.div(where, num_classes, rounding_mode="floor")
            anchors = grid_anchors(getattr(self, f"cells_{name}"), feature, padded)
            decoded = self.decode(outputs, image, location, anchors[location])
            boxes.append(clip_boxes(decoded, resized))
            scores.append(top)
            labels.append(where % num_classes)  # output j is label j (background slot 0 included, as torchvision)
            levels.append(torch.full_like(where, index))
            images.append(image)
        boxes, scores, labels, levels, images = (torch.cat(t) for t in (boxes, scores, labels, levels, images))
        num_classes = self.model.head.num_classes
        cap = cfg.detections_per_image
        kept = grouped_nms(boxes, scores, images * num_classes + labels, num_images * num_classes, cfg.nms_thresh, cap)
        kept = kept[top_per_image(scores[kept], images[kept], num_images, cap)]
        return boxes[kept], scores[kept], labels[kept], levels[kept], images[kept]


class FCOSGraph(OneStageGraph):
    """FCOS: ``sqrt(sigmoid(class) * sigmoid(centerness))``; boxes ``(l, t, r, b)`` times the stride."""

    def scores(self, outputs: tuple[Tensor, ...]) -> Tensor:
        logits, _, ctr = outputs  # [N, L, K], [N, L, 4], [N, L]
        return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctr)[..., None])

    def decode(self, outputs: tuple[Tensor, ...], image: Tensor, location: Tensor, anchors: Tensor) -> Tensor:
        return fcos_decode(outputs[1][image, location], anchors)


class RetinaNetGraph(OneStageGraph):
    """RetinaNet: sigmoid scores; ``BoxCoder(1, 1, 1, 1)`` deltas on the anchors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.coder = model.decoder.box_coder

    def scores(self, outputs: tuple[Tensor, ...]) -> Tensor:
        return torch.sigmoid(outputs[0])

    def decode(self, outputs: tuple[Tensor, ...], image: Tensor, location: Tensor, anchors: Tensor) -> Tensor:
        deltas = outputs[1][image, location]  # [C, 4]
        return decode(deltas[:, None], anchors, self.coder.weights, self.coder.clip)[:, 0]
