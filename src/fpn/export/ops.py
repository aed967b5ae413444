"""Traceable pieces of an exported detector: NMS and RoIAlign as ONNX ops, per-image ranking, anchors, decoding.

Everything here runs under the TorchScript tracer of ``torch.onnx.export`` with every shape a traced tensor,
so the graph stays right for any image size, any batch size and any number of boxes, zero included. No
Python ``if`` or ``int()`` on a shape or a count: that would freeze the trace's value into the graph.

Two ops have no traceable PyTorch formulation with a data-dependent output, so each is an
``autograd.Function`` whose ``forward`` is this project's own implementation (what the tracing run computes)
and whose ``symbolic`` is the ONNX op (what the file holds): :class:`NonMaxSuppression` (ONNX
``NonMaxSuppression``, opset 10+) and :class:`RoIAlignOp` (ONNX ``RoiAlign``, opset 16+ for the
``output_half_pixel`` mode, torchvision's ``aligned=False``). torchvision exports the same two ops.

Boxes of several groups (levels, classes, images) are kept apart the way ONNX's op does it natively: one
"class" row of scores per group, with the boxes of other groups scored :data:`MASKED` (below the op's score
threshold, so they neither survive nor suppress). IoUs are those of the original coordinates, as
:func:`fpn.ops.batched_nms` computes them (no coordinate offset per group).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from fpn.ops import nms
from fpn.ops.roi_align import roi_align

#: The score of a box outside its group (or filtered out): below :data:`NMS_SCORE_FLOOR`, so ONNX's
#: NonMaxSuppression drops it before suppression. Real scores are probabilities in 0..1.
MASKED = -1.0
NMS_SCORE_FLOOR = -0.5


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run the enclosed ops without recording them: a symbolic op's reference ``forward`` is one node of the
    trace (its ``symbolic``), and the tracer cannot record the nested autograd Functions inside it."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def shape(x: Tensor) -> Tensor:
    """``x``'s shape as an int64 tensor (traced as ONNX ``Shape``, so it follows the input's size)."""
    return torch._shape_as_tensor(x)


class NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: ``boxes [B, M, 4]`` xyxy, ``scores [B, C, M]`` -> ``selected [S, 3]`` int64.

    Each selected row is ``(batch, class, box)``; per batch and class, greedy NMS (IoU strictly above
    ``iou`` suppresses, as :func:`fpn.ops.nms`) over the boxes scoring above ``score_floor``, at most
    ``max_per_class`` kept, in decreasing score.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_floor: float) -> Tensor:
        with untraced():
            return NonMaxSuppression.reference(boxes, scores, max_per_class, iou, score_floor)

    @staticmethod
    def reference(boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_floor: float) -> Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                candidates = torch.where(scores[b, c] > score_floor)[0]
                keep = candidates[nms(boxes[b, candidates], scores[b, c, candidates], iou)][:max_per_class]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, score_floor: float):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            const(max_per_class, torch.int64),
            const(iou, torch.float32),
            const(score_floor, torch.float32),
        )


class RoIAlignOp(torch.autograd.Function):
    """ONNX ``RoiAlign`` (avg): ``features [N, C, H, W]``, ``boxes [K, 4]``, ``batch [K]`` -> ``[K, C, oh, ow]``.

    ``aligned=False`` is torchvision's (and the project's) legacy mode, ONNX's ``output_half_pixel``.
    """

    @staticmethod
    def forward(ctx, features, boxes, batch, out_h: int, out_w: int, scale: float, sampling: int, aligned: bool):
        with untraced():
            rois = torch.cat([batch[:, None].to(boxes.dtype), boxes], dim=1)
            return roi_align(features, rois, (out_h, out_w), scale, sampling, aligned)

    @staticmethod
    def symbolic(g, features, boxes, batch, out_h: int, out_w: int, scale: float, sampling: int, aligned: bool):
        return g.op(
            "RoiAlign",
            features,
            boxes,
            batch,
            output_height_i=out_h,
            output_width_i=out_w,
            spatial_scale_f=scale,
            sampling_ratio_i=sampling,
            mode_s="avg",
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
        )


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: Tensor, iou: float, cap: int) -> Tensor:
    """NMS within groups of one image's candidates: ``boxes [M, 4]``, ``scores [M]``, ``groups [M]`` int64 in
    ``0..num_groups-1`` -> indices (int64 ``[S]``) of the kept candidates, at most ``cap`` per group."""
    member = groups[None, :] == torch.arange(num_groups, device=groups.device)[:, None]  # [G, M]
    grouped = torch.where(member, scores[None, :], torch.full_like(scores, MASKED)[None, :])
    selected = NonMaxSuppression.apply(boxes[None], grouped[None], cap, iou, NMS_SCORE_FLOOR)
    return selected[:, 2]


def top_per_image(scores: Tensor, image: Tensor, num_images: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores [S]`` of each image (``image [S]`` int64), image by image, each
    image's by decreasing score (ties: the earlier candidate first): the output order of the exported file."""
    count = shape(scores)[0]
    by_score = torch.topk(scores, count, largest=True, sorted=True).indices  # ONNX TopK: ties by lower index
    ranked_image = image[by_score]
    member = (ranked_image[:, None] == torch.arange(num_images, device=image.device)[None, :]).to(torch.int64)
    rank = (member.cumsum(0) * member).sum(1) - 1  # position of each among its image's candidates
    keep = torch.where(rank < k)[0]
    kept, kept_image = by_score[keep], ranked_image[keep]
    # Image-major: one exact int64 key per candidate (its image, then its rank), sorted ascending.
    key = kept_image * (count + 1) + rank[keep]
    order = torch.topk(key, shape(key)[0], largest=False, sorted=True).indices
    return kept[order]


def grid_anchors(cells: Tensor, feature: Tensor, padded: Tensor) -> Tensor:
    """Anchors of one level ``[H * W * A, 4]`` as :class:`fpn.detection.anchors.AnchorGenerator` lays them out.

    ``cells [A, 4]`` are the level's anchors centred on (0, 0), ``feature [N, C, H, W]`` the level's map and
    ``padded`` the padded image's (h, w) (int64 ``[2]``); the stride is ``padded // map size`` per axis, as
    the generator measures it (P6 of an 800 px image: 800 // 13 = 61, not 64).
    """
    size = shape(feature)[2:]
    stride = torch.div(padded, size, rounding_mode="floor")
    shifts_y = torch.arange(size[0], device=feature.device) * stride[0]
    shifts_x = torch.arange(size[1], device=feature.device) * stride[1]
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).to(cells.dtype)
    return (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)


def decode(deltas: Tensor, boxes: Tensor, weights: tuple[float, ...], clip: float) -> Tensor:
    """:meth:`fpn.ops.BoxCoder.decode` in the same order of operations: ``deltas [M, K, 4]``, ``boxes [M, 4]``
    -> ``[M, K, 4]``; no reshape with an inferred size, so that ``M = 0`` runs too."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=clip)
    dh = (deltas[..., 3] / wh).clamp(max=clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    half_w = 0.5 * pred_w
    half_h = 0.5 * pred_h
    return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)


def clip_boxes(boxes: Tensor, size: Tensor) -> Tensor:
    """Clamp ``boxes [..., 4]`` into an image of ``size`` (h, w) (int64 ``[2]``), as ``clip_boxes_to_image``."""
    high = torch.stack([size[1], size[0], size[1], size[0]]).to(boxes.dtype)
    return torch.minimum(torch.maximum(boxes, torch.zeros_like(high)), high)


def big_enough(boxes: Tensor, min_size: float) -> Tensor:
    """``[...]`` bool: width and height both at least ``min_size`` (``remove_small_boxes`` as a mask)."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
