"""Building blocks any network of the package uses: norms, fused convolution + add + ReLU, Winograd 3x3.

* :mod:`fpn.layers.norms`: frozen BatchNorm (torchvision's keys), ``make_norm`` by name, a convolution and
  its norm (folded on the fly in training), the ResNet step ``relu(norm(conv(x)) + residual)``;
* :mod:`fpn.layers.group_norm`: ``nn.GroupNorm`` with a fast backward on channels-last CPU maps;
* :mod:`fpn.layers.conv_pointwise`: ``relu(conv(x) [+ residual])`` as one oneDNN kernel (CPU inference);
* :mod:`fpn.layers.winograd` (and its transforms): 3x3 stride-1 convolutions with Winograd F(4x4, 3x3).

Backbones and pyramids build on these; nothing here knows of either.
"""

from __future__ import annotations

from fpn.layers.conv_pointwise import add_relu_, conv_relu, fusable
from fpn.layers.group_norm import GroupNorm
from fpn.layers.norms import (
    FrozenBatchNorm2d,
    conv_norm,
    conv_norm_relu,
    folded_weight_bias,
    group_count,
    make_norm,
)
from fpn.layers.winograd import (
    WinogradConv2d,
    Workspace,
    direct_convolutions,
    transform_weight,
    use_winograd,
    winograd_conv3x3,
)

__all__ = [
    "FrozenBatchNorm2d",
    "GroupNorm",
    "WinogradConv2d",
    "Workspace",
    "add_relu_",
    "conv_norm",
    "conv_norm_relu",
    "conv_relu",
    "direct_convolutions",
    "folded_weight_bias",
    "fusable",
    "group_count",
    "make_norm",
    "transform_weight",
    "use_winograd",
    "winograd_conv3x3",
]
