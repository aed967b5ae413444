"""Counting FLOPs: what ran, and what the model's layers are worth. Used by ``fpn models``, ``bench``, ``compare``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add, on the ops that
actually ran (so a detector's count depends on how many proposals survived), convolutions and matrix
products only (NMS, RoIAlign's gathers and element-wise work count nothing); a training step counts its
backward pass too.

Two counts of one iteration differ where Winograd F(4x4, 3x3) replaced a 3x3 convolution by GEMMs with a
quarter of the multiplications: *executed* (:func:`count_gflops`, what ran) and *nominal*
(:func:`nominal_gflops`, every layer as the direct convolution the model defines). Rates set against the
machine's peak use the nominal count, so a fraction above 1 can only come from doing fewer multiplications.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from fpn.layers.winograd import direct_convolutions


def count_gflops(step: Callable[[], object]) -> float:
    """GFLOPs of one call of ``step`` (backward included if it runs one)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 1e9


def nominal_gflops(model: torch.nn.Module, step: Callable[[], object]) -> float:
    """GFLOPs of one ``step`` with every layer counted as the model defines it (Winograd as a direct convolution)."""
    with direct_convolutions(model):
        return count_gflops(step)


def forward_gflops(model: torch.nn.Module, image: torch.Tensor) -> float:
    """GFLOPs of one eval-mode, no-grad forward pass of a detector on one ``[3, H, W]`` image."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count_gflops(lambda: model([image]))
    finally:
        model.train(was_training)
