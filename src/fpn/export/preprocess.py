"""The exported file's pre- and post-processing: :class:`fpn.detection.transform.DetectionTransform` as a graph.

Input ``images [N, 3, H, W]`` float32 RGB in 0..1 (one size per batch: it is one tensor). The steps, in
the order and arithmetic of the PyTorch path, so that both give the same pixels to float rounding:

1. normalise: ``(x - mean) / std``;
2. resize, bilinear: the scale ``min(shorter / min(H, W), max_size / max(H, W))`` and the resized size
   ``floor(H * scale)`` are computed in float64 from the input's shape (as Python computes them; float32
   would give 799 rows for a 480 px image resized to 800), then ONNX ``Resize`` to that size;
3. zero-pad bottom and right to a multiple of the coarsest stride.

Detections come back to the input's pixels with :func:`to_original` (``resize_boxes``' float32 ratios).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.detection.transform import DetectionTransform
from fpn.export.ops import shape


class Preprocess(nn.Module):
    """``images [N, 3, H, W]`` -> ``batch [N, 3, Hp, Wp]``, resized ``(h, w)``, original ``(H, W)`` (int64 [2])."""

    def __init__(self, transform: DetectionTransform) -> None:
        super().__init__()
        # float64 tensors of one dimension, not Python floats or 0-dim tensors: the exporter writes scalars as
        # float32, and 800 / 333 * 333 in float32 floors to 799 where Python (float64) gives 800.
        sides = torch.tensor([transform.min_size[-1], transform.max_size], dtype=torch.float64)
        self.register_buffer("sides", sides, persistent=False)  # the test-time shorter side, the longer's cap
        self.divisor = int(transform.size_divisible)
        self.register_buffer("mean", transform.mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", transform.std.detach().clone().view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        original = shape(images)[2:]
        size = original.to(torch.float64)
        extremes = torch.stack([size.min(), size.max()])  # [2] float64
        scale = (self.sides / extremes).min(dim=0, keepdim=True).values  # [1]
        resized = torch.floor(size * scale).to(torch.int64)
        normalised = (images - self.mean) / self.std
        # A traced size: ONNX Resize to `resized` (sizes input), half-pixel coordinates as PyTorch's bilinear.
        image = F.interpolate(normalised, size=(resized[0], resized[1]), mode="bilinear", align_corners=False)
        padded = torch.div(resized + (self.divisor - 1), self.divisor, rounding_mode="floor") * self.divisor
        pad = padded - resized
        batch = F.pad(image, (0, pad[1], 0, pad[0]))
        return batch, resized, original


def to_original(boxes: Tensor, resized: Tensor, original: Tensor) -> Tensor:
    """``boxes [D, 4]`` from resized-image pixels to the input's, as :func:`~fpn.detection.transform.resize_boxes`."""
    ratio = original.to(torch.float32) / resized.to(torch.float32)  # (h, w)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio[1], y1 * ratio[0], x2 * ratio[1], y2 * ratio[0]), dim=1)
