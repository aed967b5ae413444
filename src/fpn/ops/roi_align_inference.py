"""RoIAlign when nothing needs a gradient: each output bin is one weighted sum of map rows.

A bin of a RoI is a weighted sum of the map pixels its samples touch: per sample, 2 pixels along each axis
(:mod:`fpn.ops.roi_sampling`), so ``(2 * grid_h) x (2 * grid_w)`` (pixel, weight) pairs per bin, 16 at the
usual 2x2 samples. With the map as a table of rows ``[N * H * W, C]`` (a view of channels-last features), the
whole pooling is one ``F.embedding_bag(mode="sum", per_sample_weights=...)`` per level: a weighted gather-sum
that PyTorch runs as one kernel over every bin, reading the map rows straight from the table. Unlike the crop
path (:mod:`fpn.ops.roi_align`) there is no grouping by crop size, no per-group products and nothing
materialised but the pairs, which is what a forward pass of a few hundred RoIs spends most of its time on.

It has no backward of its own (training takes the crop path, whose backward is written by hand). The sums run
in the features' dtype: float32 and float64 results equal the crop path's to rounding; bfloat16 and float16
features get weights of their own precision (the crop path keeps its weights in float32), a difference below
the features' own rounding (measured in the tests and in benchmarks/bf16_accuracy.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.ops.roi_sampling import AxisSamples, LevelRoIs

__all__ = ["pool_levels", "supports"]

# At most this many (pixel, weight) pairs are built at once (16 bytes each with the int64 pixel index): 1000 RoIs
# of 7x7 bins with 2x2 samples take 784k; adaptive sampling on huge RoIs can take far more.
_PAIR_BUDGET = 1 << 22

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def supports(maps: Sequence[Tensor]) -> bool:
    """Whether :func:`pool_levels` applies: no gradient is asked for and the dtype has an embedding-bag kernel."""
    needs_grad = torch.is_grad_enabled() and any(m.requires_grad for m in maps)
    return not needs_grad and all(m.dtype in _DTYPES for m in maps)


def pool_levels(maps: Sequence[Tensor], level_rois: LevelRoIs, positions: Tensor, num_rois: int) -> Tensor:
    """:func:`~fpn.ops.roi_align.roi_align_levels`' result ``[num_rois, C, out_h, out_w]``, without a backward.

    ``level_rois`` are pooled map by map from ``maps`` (each map with RoIs) into the result's rows ``positions``
    (every RoI's output row, maps in order); rows no RoI fills stay zero. The result is a channels-last view
    (each bin's channels adjacent, as the gather writes them) of shape ``[num_rois, C, out_h, out_w]``.
    """
    out_h, out_w = level_rois.output_size
    first = maps[0]
    channels, device = first.shape[1], first.device
    pooled = first.new_zeros(num_rois, out_h, out_w, channels)
    along_y, along_x = level_rois.samples_y(), level_rois.samples_x()
    # Table rows: the image's first row, plus y * width along y and x along x ([K, out, 2 * grid] each).
    rows_y = _pixels(along_y).mul_(level_rois.widths[:, None, None]).add_(level_rois.base[:, None, None])
    rows_x, weights_y, weights_x = _pixels(along_x), _weights(along_y), _weights(along_x)
    per_bin = rows_y.shape[2] * rows_x.shape[2]
    per_roi = out_h * out_w * per_bin
    step = max(1, _PAIR_BUDGET // per_roi)
    start = 0
    for features, count in zip(maps, level_rois.counts):
        table = features.permute(0, 2, 3, 1).reshape(-1, channels)  # a view for channels-last maps
        for low in range(start, start + count, step):
            high = min(low + step, start + count)
            # [R, out_h, out_w, 2 * grid_h, 2 * grid_w]: every bin's pairs, y-major as the weights are.
            pixels = rows_y[low:high, :, None, :, None] + rows_x[low:high, None, :, None, :]
            weights = weights_y[low:high, :, None, :, None] * weights_x[low:high, None, :, None, :]
            offsets = torch.arange(0, pixels.numel(), per_bin, device=device)
            bins = F.embedding_bag(
                pixels.view(-1), table, offsets, mode="sum", per_sample_weights=weights.view(-1).to(table.dtype)
            )
            pooled.index_copy_(0, positions[low:high], bins.view(high - low, out_h, out_w, channels))
        start += count
    return pooled.permute(0, 3, 1, 2)


def _pixels(samples: AxisSamples) -> Tensor:
    """``[K, out, 2 * samples]``: the low then the high pixel of every sample."""
    return torch.cat([samples.low, samples.high], dim=2)


def _weights(samples: AxisSamples) -> Tensor:
    return torch.cat([samples.w_low, samples.w_high], dim=2)
