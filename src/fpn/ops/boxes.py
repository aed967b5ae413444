"""Box geometry in ``(x1, y1, x2, y2)`` pixel coordinates: areas, IoU, clipping, and the box coder.

Widths are ``x2 - x1`` (no ``+ 1``), as in torchvision and Detectron2: a box is a continuous region,
not a set of pixel indices. The formulas below are written in the same order of operations as
torchvision's so that float32 results agree bit for bit, which lets golden tests be strict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "BoxCoder",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "remove_small_boxes",
]


def _upcast(t: Tensor) -> Tensor:
    """Promote half precision to float32 so that products of coordinates do not overflow or lose all precision."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")


def box_area(boxes: Tensor) -> Tensor:
    """Area ``(x2 - x1) * (y2 - y1)`` of boxes ``[..., 4]`` -> ``[...]``.

    Degenerate boxes give 0 and inverted ones (``x2 < x1``) a negative area; callers that care filter them.
    """
    _check_boxes(boxes)
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of ``boxes1 [N, 4]`` and ``boxes2 [M, 4]`` -> ``[N, M]``.

    Two zero-area boxes give ``0 / 0 = nan``, as in torchvision; ``nan > threshold`` is false, so NMS keeps
    both and a matcher never matches on it.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    a, b = boxes1[:, None, :], boxes2[None, :, :]
    width = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    height = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    # Same order as torchvision's CPU NMS kernel (area_i + area_j - inter) so thresholds cut identically.
    union = area1[:, None] + area2[None, :]
    if boxes1.requires_grad or boxes2.requires_grad:
        inter = width.clamp(min=0) * height.clamp(min=0)
        return inter / (union - inter)
    # In place, one [N, M] buffer per quantity: this is the hot loop of NMS and matching.
    inter = width.clamp_(min=0).mul_(height.clamp_(min=0))
    return inter.div_(union.sub_(inter))


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp boxes ``[..., 4]`` into an image of ``size = (height, width)``: x into ``[0, w]``, y into ``[0, h]``."""
    _check_boxes(boxes)
    height, width = size
    low = torch.zeros(4, dtype=boxes.dtype, device=boxes.device)
    high = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return boxes.clamp(min=low, max=high)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64 ``[K]``) of the boxes ``[N, 4]`` whose width and height are both ``>= min_size``."""
    _check_boxes(boxes)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    keep = (widths >= min_size) & (heights >= min_size)
    return torch.where(keep)[0]


class BoxCoder:
    """Encode boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes (anchors, proposals), and back.

    ``dx = wx * (gx - px) / pw``, ``dw = ww * log(gw / pw)`` (centres ``x1 + 0.5 * w``), the R-CNN
    parameterisation with torchvision's exact conventions. On decoding, ``dw`` and ``dh`` are clamped at
    ``clip`` before ``exp`` so that a wild regression output cannot produce an infinite box.
    """

    def __init__(
        self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0), clip: float = math.log(1000.0 / 16)
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder needs 4 weights (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.clip = float(clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, clip={self.clip:.4f})"

    def encode(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Deltas that move ``proposals [..., 4]`` onto the matched ``reference_boxes [..., 4]`` -> ``[..., 4]``.

        ``reference_boxes`` are the targets (ground truth), ``proposals`` the boxes being regressed from
        (anchors or proposals); the argument order is torchvision's. Any leading shape works, so a batch
        of matched boxes ``[B, N, 4]`` is encoded in one call. The result has the dtype of
        ``reference_boxes``.
        """
        _check_boxes(reference_boxes, "reference_boxes")
        _check_boxes(proposals, "proposals")
        proposals = proposals.to(reference_boxes.dtype)
        wx, wy, ww, wh = self.weights

        ex_widths = proposals[..., 2] - proposals[..., 0]
        ex_heights = proposals[..., 3] - proposals[..., 1]
        ex_ctr_x = proposals[..., 0] + 0.5 * ex_widths
        ex_ctr_y = proposals[..., 1] + 0.5 * ex_heights

        gt_widths = reference_boxes[..., 2] - reference_boxes[..., 0]
        gt_heights = reference_boxes[..., 3] - reference_boxes[..., 1]
        gt_ctr_x = reference_boxes[..., 0] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[..., 1] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * torch.log(gt_widths / ex_widths)
        dh = wh * torch.log(gt_heights / ex_heights)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def encode_batch(self, reference_boxes: Sequence[Tensor], proposals: Sequence[Tensor]) -> list[Tensor]:
        """Encode per-image lists of matched boxes (``[Ni, 4]`` each) in one pass -> list of ``[Ni, 4]``."""
        if len(reference_boxes) != len(proposals):
            raise ValueError(f"got {len(reference_boxes)} lists of reference boxes but {len(proposals)} of proposals")
        counts = [len(b) for b in reference_boxes]
        if counts != [len(p) for p in proposals]:
            raise ValueError("reference_boxes and proposals must hold the same number of boxes per image")
        if not counts:
            return []
        deltas = self.encode(torch.cat(list(reference_boxes)), torch.cat(list(proposals)))
        return list(deltas.split(counts))

    def decode(self, deltas: Tensor, boxes: Tensor | Sequence[Tensor]) -> Tensor:
        """Apply ``deltas [N, 4 * K]`` (K boxes per reference, e.g. one per class) to ``boxes [N, 4]`` -> ``[N, K, 4]``.

        ``boxes`` may also be a per-image list, which is concatenated (``deltas`` then holds all images' rows).
        The result has the dtype of ``deltas``.
        """
        if not isinstance(boxes, Tensor):
            boxes = torch.cat(list(boxes)) if len(boxes) else deltas.new_zeros(0, 4)
        _check_boxes(boxes)
        num = boxes.shape[0]
        if deltas.numel() % 4 != 0 or (num > 0 and deltas.numel() % (4 * num) != 0):
            raise ValueError(f"deltas of shape {tuple(deltas.shape)} do not hold 4 * K values for each of {num} boxes")
        deltas = deltas.reshape(num, -1) if num > 0 else deltas.reshape(0, deltas.shape[-1] if deltas.dim() else 0)
        boxes = boxes.to(deltas.dtype)

        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        half_w = 0.5 * pred_w
        half_h = 0.5 * pred_h
        return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)
