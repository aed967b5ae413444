"""Focal and GIoU losses against slow, obviously-correct formulas written from the papers."""

from __future__ import annotations

import math

import pytest
import torch

from fpn.ops.losses import generalized_box_iou_loss, sigmoid_focal_loss


def focal_by_hand(logit: float, target: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_focal_loss_matches_the_paper_elementwise(alpha, gamma):
    logits = torch.linspace(-6, 6, 25, dtype=torch.float64).reshape(5, 5)
    targets = (torch.arange(25) % 3 == 0).to(torch.float64).reshape(5, 5)
    loss = sigmoid_focal_loss(logits, targets, alpha, gamma)
    expected = [
        focal_by_hand(x, t, alpha, gamma) for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist())
    ]
    torch.testing.assert_close(loss.flatten(), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha, gamma, "sum"), loss.sum())
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha, gamma, "mean"), loss.mean())


def test_focal_loss_with_gamma_zero_and_no_alpha_is_cross_entropy():
    logits, targets = torch.randn(40), (torch.rand(40) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0), bce)


def test_focal_loss_is_finite_for_confident_logits():
    loss = sigmoid_focal_loss(torch.tensor([-100.0, 100.0]), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(loss).all() and (loss > 1).all()


def giou_by_hand(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_giou_loss_matches_the_definition():
    a = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 6, 9]], dtype=torch.float64)
    b = torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 40], [0, 0, 1, 1]], dtype=torch.float64)
    loss = generalized_box_iou_loss(a, b)
    expected = torch.tensor([1 - giou_by_hand(x, y) for x, y in zip(a.tolist(), b.tolist())], dtype=torch.float64)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    assert loss[0] == pytest.approx(0, abs=1e-6) and 1 < loss[2] < 2


def test_giou_loss_has_a_gradient_for_disjoint_boxes():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    generalized_box_iou_loss(a, torch.tensor([[5.0, 5.0, 6.0, 6.0]]), reduction="sum").backward()
    assert a.grad.abs().sum() > 0


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="avg")
