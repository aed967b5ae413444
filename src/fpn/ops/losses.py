"""The one-stage detectors' losses: sigmoid focal loss (RetinaNet, FCOS) and generalised IoU loss (FCOS).

Both follow torchvision's definitions (``torchvision.ops.sigmoid_focal_loss``,
``generalized_box_iou_loss``) so that a model trained here and one trained there minimise the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("none", "sum", "mean")


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss (Lin et al., 2017, eq. 5) on independent sigmoid outputs, elementwise before reduction.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` with ``p_t = p`` where the target is 1 and ``1 - p`` where it
    is 0, and ``alpha_t`` likewise ``alpha`` / ``1 - alpha`` (``alpha < 0`` disables the weighting).

    Args:
        logits: any shape, e.g. ``[A, K]`` (anchors x classes), float.
        targets: the same shape, 0 or 1 (soft targets in between are allowed).
        reduction: ``none`` (the elementwise loss), ``sum`` or ``mean``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t), stable
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` of paired boxes (Rezatofighi et al., 2019): ``[N, 4]`` xyxy and ``[N, 4]`` -> ``[N]``.

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest box enclosing both; 0 for equal boxes,
    up to 2 for far-apart ones, and with a gradient even where the boxes do not overlap (unlike IoU).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    x1, y1, x2, y2 = boxes1.unbind(-1)
    u1, v1, u2, v2 = boxes2.unbind(-1)
    inter_w = (torch.min(x2, u2) - torch.max(x1, u1)).clamp(min=0)
    inter_h = (torch.min(y2, v2) - torch.max(y1, v1)).clamp(min=0)
    intersection = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - intersection
    iou = intersection / (union + eps)
    enclosing = (torch.max(x2, u2) - torch.min(x1, u1)) * (torch.max(y2, v2) - torch.min(y1, v1))
    giou = iou - (enclosing - union) / (enclosing + eps)
    return _reduce(1 - giou, reduction)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss
