"""Inference-time rewrites of the bottom-up pathway that keep its results (to float rounding).

Folding: a convolution followed by a frozen BatchNorm computes ``(W * x) * s + t`` with constants ``s, t``;
that is one convolution with weights ``W * s`` and bias ``t``. Folding removes a full pass over every
feature map of the backbone (53 of them in a ResNet-50) and lets the convolution add the bias in place.
"""

from __future__ import annotations

import torch
from torch import nn

from fpn.backbones.resnet import BasicBlock, Bottleneck
from fpn.layers.norms import FrozenBatchNorm2d, folded_weight_bias


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` for a frozen ``bn``."""
    weight, bias = folded_weight_bias(conv, bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    fused.requires_grad_(False)
    return fused


def fold_frozen_batchnorms(module: nn.Module) -> int:
    """Fold every ``convN`` / ``bnN`` (and ``downsample.0`` / ``.1``) frozen pair in place; returns how many."""
    folded = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, FrozenBatchNorm2d):
                continue
            conv_name = "conv" + name[2:] if name.startswith("bn") else str(int(name) - 1) if name.isdigit() else None
            conv = getattr(parent, conv_name, None) if conv_name is not None else None
            if isinstance(conv, nn.Conv2d):
                setattr(parent, conv_name, fold_conv_bn(conv, child))
                setattr(parent, name, nn.Identity())
                folded += 1
    return folded


def let_blocks_overwrite_inputs(module: nn.Module) -> int:
    """Let every ResNet block of ``module`` write its result into its input in inference; returns how many.

    A block's input is its shortcut; the fused convolution + add + ReLU can then accumulate into it
    instead of allocating a fresh map (see :func:`fpn.layers.conv_pointwise.conv_relu`). Safe inside a
    backbone's forward, where each block's input is read by that block only.
    """
    blocks = [m for m in module.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    for block in blocks:
        block.overwrite_input = True
    return len(blocks)
