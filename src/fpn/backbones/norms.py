"""Normalisation layers for the bottom-up pathway.

``frozen_bn`` is what a pretrained detector uses: batch statistics from ImageNet, fixed, because detection
batches (1-2 images per device) are too small to estimate them. ``gn`` (GroupNorm) is for training from
scratch, the only kind of training a CPU affords. ``bn`` is plain BatchNorm for large-batch training.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all stored as buffers.

    State-dict keys (``weight``, ``bias``, ``running_mean``, ``running_var``) match torchvision's layer, so
    detection checkpoints load unchanged; a ``num_batches_tracked`` entry (from a BatchNorm checkpoint)
    is accepted and ignored.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same arithmetic, in the same order, as torchvision, so results agree to the last bit.
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def group_count(channels: int, preferred: int = 32) -> int:
    """The largest number of groups <= ``preferred`` that divides ``channels`` (narrow nets have < 32)."""
    return math.gcd(channels, preferred)


def make_norm(kind: str, channels: int, eps: float = 1e-5) -> nn.Module:
    """A normalisation layer by name: ``frozen_bn``, ``bn`` or ``gn`` (``eps`` applies to the BatchNorms)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=eps)
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "gn":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown norm {kind!r}")
