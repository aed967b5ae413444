"""RoIAlign (He et al., Mask R-CNN) in plain PyTorch, matching torchvision's CPU kernel sample for sample.

Each output bin averages ``grid_h x grid_w`` bilinear samples at regularly spaced points inside it.
The samples' positions, the bilinear rule at the map border and the averaging count follow
``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``; the arithmetic is written in the same order so that
float32 results agree to rounding.

The work is a gather: every sample of every RoI reads 4 feature vectors (all channels at once) from a
``[N * H * W, C]`` view of the features. Bilinear interpolation is separable, so the sample positions
and weights are computed per axis (``[R, out_h, grid_h]`` and ``[R, out_w, grid_w]``) and combined by
broadcasting. Autograd differentiates through the gather (a scatter-add in backward), which is what
torchvision's backward kernel does by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["boxes_to_rois", "roi_align"]

# Upper bound on the elements of one chunk's gathered [R, out_h, out_w, 4 * grid_h * grid_w, C] tensor (64 MB fp32).
_GATHER_BUDGET = 1 << 24
# At most this many RoIs per chunk, whatever the budget allows.
_MAX_CHUNK = 256


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes (list of ``[Ki, 4]``) -> ``[sum Ki, 5]`` rows ``(image_index, x1, y1, x2, y2)``."""
    if len(boxes) == 0:
        return torch.zeros(0, 5)
    cat = torch.cat(list(boxes))
    image_index = torch.cat(
        [torch.full((len(b), 1), i, dtype=cat.dtype, device=cat.device) for i, b in enumerate(boxes)]
    )
    return torch.cat([image_index, cat], dim=1)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    if len(size) != 2:
        raise ValueError(f"output_size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def roi_align(
    features: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pool each RoI of ``features [N, C, H, W]`` to ``[K, C, out_h, out_w]``.

    Args:
        features: the feature map batch.
        rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input coordinates, or a list of
            per-image ``[Ki, 4]`` boxes.
        output_size: ``out`` or ``(out_h, out_w)``.
        spatial_scale: feature-map pixels per input pixel (``1 / stride``).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means ``ceil(roi_size / out_size)``,
            chosen per RoI.
        aligned: shift the RoI by -0.5 feature pixels so that sample positions are pixel centres
            (Detectron2's ``ROIAlignV2``). When false, RoIs are at least 1x1 feature pixels.

    Returns:
        ``[K, C, out_h, out_w]`` in the dtype of ``features``. Coordinates and weights are computed in
        float32 (float64 for float64 features) and bins are accumulated in that precision, so bf16 and
        fp16 features pool with fp32 accuracy; only the gathered values and the result are low precision.
    """
    if features.dim() != 4:
        raise ValueError(f"features must have shape [N, C, H, W], got {tuple(features.shape)}")
    if not isinstance(rois, Tensor):
        rois = boxes_to_rois(rois)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    out_h, out_w = _pair(output_size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output_size must be positive, got {(out_h, out_w)}")
    batch, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0 or height == 0 or width == 0:
        # Keep the result attached to the graph so that a loss over zero RoIs still backpropagates (zeros).
        return features.new_zeros(num_rois, channels, out_h, out_w) + features.flatten()[:0].sum()

    coord_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    # No gradient for the boxes (as torchvision): the sample positions are not differentiable through floor().
    rois = rois.detach().to(device=features.device, dtype=coord_dtype)
    batch_index = rois[:, 0].long()
    low, high = int(batch_index.min()), int(batch_index.max())
    if low < 0 or high >= batch:
        raise ValueError(f"roi batch indices must lie in [0, {batch - 1}], got values in [{low}, {high}]")

    geometry = _roi_geometry(rois, out_h, out_w, spatial_scale, sampling_ratio, aligned)
    # [N * H * W, C]: one row per feature-map position, so one gather fetches all channels of a sample.
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    base = batch_index * (height * width)

    # Group RoIs by their (grid_h, grid_w) so that no chunk pads samples (adaptive grids differ per RoI).
    order, chunks = _plan(geometry.grid_h.cpu(), geometry.grid_w.cpu(), 4 * out_h * out_w * channels)
    if order is not None:
        order = order.to(features.device)
    pooled = []
    for start, stop, grid_h, grid_w in chunks:
        idx = slice(start, stop) if order is None else order[start:stop]
        chunk = geometry.select(idx)
        pooled.append(_pool_chunk(table, base[idx], chunk, out_h, out_w, grid_h, grid_w, height, width, coord_dtype))
    result = torch.cat(pooled)
    if order is not None:
        result = result[torch.argsort(order)]
    return result.to(features.dtype)


class _Geometry:
    """Per-RoI sampling layout: start corner, bin size and samples per bin along each axis (all ``[K]``)."""

    def __init__(
        self, start_y: Tensor, start_x: Tensor, bin_h: Tensor, bin_w: Tensor, grid_h: Tensor, grid_w: Tensor
    ) -> None:
        self.start_y, self.start_x = start_y, start_x
        self.bin_h, self.bin_w = bin_h, bin_w
        self.grid_h, self.grid_w = grid_h, grid_w

    def select(self, idx: slice | Tensor) -> _Geometry:
        return _Geometry(
            self.start_y[idx], self.start_x[idx], self.bin_h[idx], self.bin_w[idx], self.grid_h[idx], self.grid_w[idx]
        )


def _roi_geometry(
    rois: Tensor, out_h: int, out_w: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> _Geometry:
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * spatial_scale - offset
    start_y = rois[:, 2] * spatial_scale - offset
    end_x = rois[:, 3] * spatial_scale - offset
    end_y = rois[:, 4] * spatial_scale - offset
    roi_w = end_x - start_x
    roi_h = end_y - start_y
    if not aligned:
        # The legacy (Detectron) behaviour: malformed or tiny RoIs are forced to 1x1 feature pixels.
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / out_h
    bin_w = roi_w / out_w
    if sampling_ratio > 0:
        grid_h = torch.full_like(bin_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(bin_w, sampling_ratio, dtype=torch.int64)
    else:
        # ceil(roi / out) as the kernel does; an inverted aligned RoI gets a grid <= 0, hence no samples.
        grid_h = torch.ceil(bin_h).nan_to_num(0.0).long()
        grid_w = torch.ceil(bin_w).nan_to_num(0.0).long()
    return _Geometry(start_y, start_x, bin_h, bin_w, grid_h, grid_w)


def _plan(grid_h: Tensor, grid_w: Tensor, per_sample: int) -> tuple[Tensor | None, list[tuple[int, int, int, int]]]:
    """Processing order and chunks ``(start, stop, grid_h, grid_w)`` for RoIs with grids ``[K]`` (on the CPU).

    RoIs are ordered so that equal grids are adjacent (``None``: keep the input order, all grids equal) and
    cut into chunks of one grid each, of at most ``_MAX_CHUNK`` RoIs and, where possible, ``_GATHER_BUDGET``
    gathered elements (a RoI with a huge adaptive grid is processed alone, whatever it costs). The loop runs
    over distinct grids, not over RoIs. Empty grids (inverted aligned RoIs) are planned as 1x1 and masked.
    """
    grid_h, grid_w = grid_h.clamp(min=0), grid_w.clamp(min=0)
    key = grid_h * (int(grid_w.max()) + 1) + grid_w
    order = None if bool((key == key[0]).all()) else torch.argsort(key, stable=True)
    sorted_key = key if order is None else key[order]
    values, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    chunks = []
    start = 0
    for value, count in zip(values.tolist(), counts.tolist()):
        gh, gw = divmod(value, int(grid_w.max()) + 1)
        gh, gw = max(gh, 1), max(gw, 1)
        step = max(1, min(_MAX_CHUNK, _GATHER_BUDGET // (gh * gw * per_sample)))
        for first in range(start, start + count, step):
            chunks.append((first, min(first + step, start + count), gh, gw))
        start += count
    return order, chunks


def _axis_samples(
    start: Tensor, bin_size: Tensor, grid: Tensor, out: int, num_samples: int, size: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis for every (RoI, bin, sample): ``low, high`` indices and their weights.

    All results are ``[R, out, num_samples]``. Samples beyond a RoI's own ``grid`` (an empty grid is planned
    as one sample) and samples outside ``[-1, size]`` get zero weights, as the kernel skips them.
    """
    device = start.device
    bins = torch.arange(out, device=device, dtype=dtype)[None, :, None]
    steps = torch.arange(num_samples, device=device, dtype=dtype)[None, None, :] + 0.5
    grid_f = grid.clamp(min=1).to(dtype)[:, None, None]
    bin_size = bin_size[:, None, None]
    # Same association as the kernel: start + bin * size + ((i + 0.5) * size) / grid.
    coord = start[:, None, None] + bins * bin_size + steps * bin_size / grid_f

    in_grid = torch.arange(num_samples, device=device)[None, None, :] < grid[:, None, None]
    # Written as "inside" so that nan coordinates count as outside, as in the kernel.
    inside = (coord >= -1.0) & (coord <= size) & in_grid
    coord = torch.where(inside, coord, torch.zeros((), dtype=dtype, device=device)).clamp(min=0.0)
    low = coord.long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(dtype), coord)
    frac = coord - low.to(dtype)
    mask = inside.to(dtype)
    return low, high, (1.0 - frac) * mask, frac * mask


# The 4 bilinear corners in the order (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high).
def _y_corners(low: Tensor, high: Tensor) -> Tensor:
    """``[R, out_h, grid_h]`` y terms -> ``[R, out_h, 1, 4, grid_h, 1]``."""
    return torch.stack((low, low, high, high), dim=2)[:, :, None, :, :, None]


def _x_corners(low: Tensor, high: Tensor) -> Tensor:
    """``[R, out_w, grid_w]`` x terms -> ``[R, 1, out_w, 4, 1, grid_w]``."""
    return torch.stack((low, high, low, high), dim=2)[:, None, :, :, None, :]


def _pool_chunk(
    table: Tensor,
    base: Tensor,
    geometry: _Geometry,
    out_h: int,
    out_w: int,
    grid_h: int,
    grid_w: int,
    height: int,
    width: int,
    dtype: torch.dtype,
) -> Tensor:
    """Pool ``R`` RoIs sharing a ``grid_h x grid_w`` grid from ``table [N * H * W, C]`` -> ``[R, C, out_h, out_w]``.

    Taps are laid out as ``[R, out_h, out_w, corner, grid_h, grid_w]`` so that each output bin reads one
    contiguous run of ``4 * grid_h * grid_w`` gathered rows, and its weighted average is a batched
    ``[1, S] @ [S, C]`` product.
    """
    num = base.shape[0]
    y_low, y_high, wy_low, wy_high = _axis_samples(
        geometry.start_y, geometry.bin_h, geometry.grid_h, out_h, grid_h, height, dtype
    )
    x_low, x_high, wx_low, wx_high = _axis_samples(
        geometry.start_x, geometry.bin_w, geometry.grid_w, out_w, grid_w, width, dtype
    )
    rows = _y_corners(y_low, y_high) * width + base[:, None, None, None, None, None]
    index = rows + _x_corners(x_low, x_high)
    # The kernel averages with count = max(grid_h * grid_w, 1) (an empty grid yields zeros, not a division by
    # zero); folding 1 / count into the small weight tensor saves a pass over the output.
    count = (geometry.grid_h * geometry.grid_w).clamp(min=1).to(dtype)
    weight = _y_corners(wy_low, wy_high) * _x_corners(wx_low, wx_high) / count[:, None, None, None, None, None]
    samples = 4 * grid_h * grid_w
    # Low-precision features are widened after the gather so that the averaging runs in `dtype`.
    values = table.index_select(0, index.reshape(-1)).view(num * out_h * out_w, samples, -1).to(dtype)
    total = torch.bmm(weight.reshape(num * out_h * out_w, 1, samples), values)
    return total.view(num, out_h, out_w, -1).permute(0, 3, 1, 2)
