"""What the one-stage (dense) heads share: conv towers over every level, per-level top-k, NMS per image.

RetinaNet and FCOS both run two small towers of 3x3 convolutions, shared across the levels, in front of
their predictors, and both turn per-location class scores into detections the same way (torchvision's
``postprocess_detections``): per level, the scores above a threshold, the ``topk`` best of them, decoded;
then per image class-wise NMS over all levels and the best ``detections_per_image``. What differs is the
score (RetinaNet's sigmoid, FCOS's ``sqrt(sigmoid(class) * sigmoid(centerness))``) and the box decoding,
which the detectors pass in.

:class:`DenseDetector` is the trunk plus ``head`` (the networks), ``anchor_generator`` (one anchor set per
cell; FCOS's "anchors" are its points, of the level's stride) and ``decoder`` (a :class:`DenseDecoder`: the
head's outputs to detections, or to losses against targets), so that a one-stage detector writes only its
head, its score and box decoding, and its losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fpn.detection.anchors import AnchorGenerator
from fpn.detection.base import PyramidDetector
from fpn.detection.transform import ImageBatch
from fpn.layers import GroupNorm, conv_relu, group_count
from fpn.levels import Level
from fpn.ops import batched_nms, clip_boxes_to_image

#: What a head returns: per-anchor tensors ``[N, T, ...]`` (T: every anchor of every level, in anchor order).
Outputs = tuple[torch.Tensor, ...]


class TowerLayer(nn.Module):
    """``relu(norm(conv3x3(x)))``, ``[N, C, H, W] -> [N, C, H, W]``; ``norm`` GroupNorm or none."""

    def __init__(self, channels: int, norm: bool, groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        # torchvision's heads use GroupNorm(32, C); narrow CPU presets take the largest count dividing C.
        self.norm = GroupNorm(group_count(channels, groups), channels) if norm else nn.Identity()
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, nn.Identity):
            return conv_relu(self.conv, x)  # one oneDNN kernel in CPU inference
        return torch.relu_(self.norm(self.conv(x)))


class ConvTower(nn.Sequential):
    """``num_convs`` :class:`TowerLayer` s: the trunk of a dense head's classification or box branch."""

    def __init__(self, channels: int, num_convs: int, norm: bool) -> None:
        super().__init__(*(TowerLayer(channels, norm) for _ in range(num_convs)))


def level_candidates(
    scores: torch.Tensor, score_thresh: float, topk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level's candidates: the scores above ``score_thresh``, at most the ``topk`` best.

    Args:
        scores: ``[L, K]`` per location and class (probabilities, float32).
    Returns:
        ``(scores [C], locations [C], classes [C])``, best first; class ``j`` is column ``j``.
    """
    flat = scores.flatten()
    keep = flat > score_thresh
    kept = flat[keep]
    index = torch.where(keep)[0]
    kept, order = kept.topk(min(topk, kept.numel()))
    index = index[order]
    classes = scores.shape[1]
    return kept, torch.div(index, classes, rounding_mode="floor"), index % classes


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    levels: torch.Tensor,
    nms_thresh: float,
    detections_per_image: int,
) -> dict[str, torch.Tensor]:
    """Class-wise NMS over one image's candidates from all levels, the best ``detections_per_image`` kept.

    ``boxes [C, 4]``, ``scores [C]``, ``labels [C]``, ``levels [C]`` (the level index k of each) ->
    the detection dict (``boxes``, ``scores``, ``labels``, ``levels``), best first.
    """
    keep = batched_nms(boxes, scores, labels, nms_thresh, max_keep=detections_per_image)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "levels": levels[keep]}


class DenseDecoder(nn.Module):
    """A dense head's outputs -> detections (eval), or the losses against targets (training). No parameters.

    A module of its own so that ``fpn bench`` times it as a stage. A detector's decoder says how a level's
    outputs score (:meth:`scores`) and decode (:meth:`decode`), and computes its :meth:`losses`; the per-level
    top-k, the clipping, NMS and the cap are shared. ``unit`` names what the anchors are in the counts
    (``anchors``, FCOS's ``locations``).
    """

    unit = "anchors"

    def __init__(self, levels: Sequence[Level], config: Any) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.config = config  # score_thresh, topk_candidates, nms_thresh, detections_per_image
        self.last_counts: dict[str, list[int]] = {}

    def forward(
        self,
        outputs: Outputs,
        anchors: torch.Tensor,
        per_level: list[int],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        if targets is not None:
            return self.losses(outputs, anchors, per_level, targets)
        return self.detections(outputs, anchors, per_level, image_sizes)

    def scores(self, outputs: Outputs) -> torch.Tensor:
        """One image's one level: ``[L, K]`` probabilities per anchor and class."""
        raise NotImplementedError

    def decode(self, outputs: Outputs, where: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes ``[C, 4]`` (xyxy) of the anchors ``where`` (``anchors`` are those anchors, ``[C, 4]``)."""
        raise NotImplementedError

    def losses(
        self, outputs: Outputs, anchors: torch.Tensor, per_level: list[int], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def detections(
        self, outputs: Outputs, anchors: torch.Tensor, per_level: list[int], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: per level the top candidates above the threshold, decoded, clipped; then NMS and the cap."""
        cfg = self.config
        level_anchors = anchors.split(per_level)
        candidates = [0] * len(self.levels)
        results = []
        for image, size in enumerate(image_sizes):
            pieces = [output[image].split(per_level) for output in outputs]
            found = []
            for i, lv in enumerate(self.levels):
                level = tuple(piece[i] for piece in pieces)
                score, where, label = level_candidates(self.scores(level), cfg.score_thresh, cfg.topk_candidates)
                # Only the kept candidates are decoded (decoding is per box: the same as decoding all).
                boxes = clip_boxes_to_image(self.decode(level, where, level_anchors[i][where]), size)
                found.append((boxes, score, label, torch.full_like(label, lv.index)))
                candidates[i] += len(score)
            merged = [torch.cat(values) for values in zip(*found)]
            results.append(select_detections(*merged, cfg.nms_thresh, cfg.detections_per_image))
        kept = [sum(int((r["levels"] == lv.index).sum()) for r in results) for lv in self.levels]
        self.last_counts = {self.unit: list(per_level), "candidates": candidates, "detections": kept}
        return results


class DenseDetector(PyramidDetector):
    """A one-stage detector: the trunk, then ``head`` over every level, ``anchor_generator`` and ``decoder``.

    A subclass builds the three in its ``__init__`` (after this one) and declares its class layers.
    """

    head: nn.Module
    anchor_generator: AnchorGenerator
    decoder: DenseDecoder

    def _networks(self) -> tuple[nn.Module, ...]:
        return (*super()._networks(), self.head)

    def stages(self) -> tuple[str, ...]:
        return ("head", "decoder")

    def run_head(
        self,
        features: dict[str, torch.Tensor],
        batch: ImageBatch,
        targets: Sequence[dict[str, torch.Tensor]] | None,
    ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        maps = [features[lv.name] for lv in self.levels]
        outputs = self.head(maps)
        sizes = {lv.name: m.shape[-2:] for lv, m in zip(self.levels, maps)}
        anchors, per_level = self.anchor_generator(batch.tensors.shape[-2:], sizes, device=outputs[0].device)
        result = self.decoder(outputs, anchors, per_level, batch.image_sizes, targets)
        self.last_counts = self.decoder.last_counts
        return result
