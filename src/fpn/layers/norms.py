"""Normalisation layers for backbones and pyramids.

``frozen_bn`` is what a pretrained detector uses: batch statistics from ImageNet, fixed, because detection
batches (1-2 images per device) are too small to estimate them. ``gn`` (GroupNorm) is for training from
scratch, the only kind of training a CPU affords. ``bn`` is plain BatchNorm for large-batch training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fpn.layers.conv_pointwise import add_relu_, conv_relu
from fpn.layers.group_norm import GroupNorm


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

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` ``[C]``: this layer computes ``x * scale + shift`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same arithmetic, in the same order, as torchvision, so results agree to the last bit.
        scale, shift = self.scale_shift()
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``; in training, a frozen BatchNorm is folded into the convolution on the fly.

    ``conv(x) * s + t`` equals a convolution with weights ``W * s`` and bias ``t``: scaling the (small)
    weights each step replaces two passes over the (large) feature map forward and one backward, and the
    gradient reaches ``W`` through the product (``grad * s``), exactly as through the BatchNorm. In eval
    mode the layers run separately, with torchvision's arithmetic (the parity path);
    ``FasterRCNN.optimize_for_inference`` folds them once and for all.
    """
    if not (norm.training and isinstance(norm, FrozenBatchNorm2d)):
        return norm(conv(x))
    weight, bias = folded_weight_bias(conv, norm)
    return conv._conv_forward(x, weight, bias)  # the module's own convolution (e.g. Winograd), other weights


def conv_norm_relu(
    conv: nn.Conv2d,
    norm: nn.Module,
    x: torch.Tensor,
    residual: torch.Tensor | None = None,
    *,
    overwrite_residual: bool = False,
) -> torch.Tensor:
    """``relu(norm(conv(x)) + residual)`` (``residual`` optional), the step every ResNet block is made of.

    Once ``optimize_for_inference`` has folded the norm away (an ``Identity``), the three operations run as
    one oneDNN kernel where they can (:func:`fpn.layers.conv_pointwise.conv_relu`; with ``overwrite_residual``
    writing into ``residual``); otherwise separately, the add and the ReLU in place
    (:func:`fpn.layers.conv_pointwise.add_relu_`).
    """
    if isinstance(norm, nn.Identity):
        return conv_relu(conv, x, residual, overwrite_residual=overwrite_residual)
    return add_relu_(conv_norm(conv, norm, x), residual)


def folded_weight_bias(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``W * s`` and bias ``t`` (plus ``b * s`` for a biased ``conv``) of ``norm(conv(x))`` as one conv."""
    scale, shift = norm.scale_shift()
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return weight, shift if conv.bias is None else conv.bias * scale + shift


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
        return GroupNorm(group_count(channels), channels)  # nn.GroupNorm with a fast channels-last backward
    raise ValueError(f"unknown norm {kind!r}")
