"""Where RoIAlign samples a map, and with what weights: the rule both RoIAlign paths share.

A RoI is split into ``out_h x out_w`` bins; each bin averages ``grid_h x grid_w`` bilinear samples at regularly
spaced points inside it. Positions, the bilinear rule at the map border and the averaging count follow
``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``. Interpolation and the average are separable, so everything is
computed per axis: a sample's weight on map pixel ``(y, x)`` is its y-weight times its x-weight, and a sample
outside the map along either axis has weight zero along that axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Geometry:
    """Per-RoI sampling layout: start corner, bin size and samples per bin along each axis (all ``[K]``)."""

    def __init__(
        self, start_y: Tensor, start_x: Tensor, bin_h: Tensor, bin_w: Tensor, grid_h: Tensor, grid_w: Tensor
    ) -> None:
        self.start_y, self.start_x = start_y, start_x
        self.bin_h, self.bin_w = bin_h, bin_w
        self.grid_h, self.grid_w = grid_h, grid_w


def roi_geometry(
    rois: Tensor, out_h: int, out_w: int, spatial_scale: float | Tensor, sampling_ratio: int, aligned: bool
) -> Geometry:
    """The layout of ``rois [K, 5]`` (``spatial_scale``: a float, or one per RoI ``[K]``)."""
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
    return Geometry(start_y, start_x, bin_h, bin_w, grid_h, grid_w)


class AxisSamples:
    """Every (RoI, bin, sample) along one axis, all ``[K, out, samples]``: the two map pixels ``low``/``high``
    a sample interpolates between and their weights ``w_low``/``w_high``, already divided by the RoI's sample
    count along this axis (so the product of the two axes' weights carries the kernel's ``1 / count``);
    ``inside``: whether the sample counts (a dead sample has zero weights; its coordinate is taken as 0, so its
    pixels are the map's first two, valid indices whatever the RoI)."""

    def __init__(self, low: Tensor, high: Tensor, w_low: Tensor, w_high: Tensor, inside: Tensor) -> None:
        self.low, self.high, self.w_low, self.w_high, self.inside = low, high, w_low, w_high, inside


def axis_samples(
    start: Tensor, bin_size: Tensor, grid: Tensor, out: int, num_samples: int, size: Tensor, dtype: torch.dtype
) -> AxisSamples:
    """The samples along one axis of maps ``size [K]`` (int64) pixels long (per RoI).

    ``num_samples`` is the largest grid: samples beyond a RoI's own ``grid`` (an empty grid is planned as one
    sample) and samples outside ``[-1, size]`` get zero weights, as the kernel skips them.
    """
    device = start.device
    bins = torch.arange(out, device=device, dtype=dtype)[None, :, None]
    steps = torch.arange(num_samples, device=device, dtype=dtype)[None, None, :] + 0.5
    grid_f = grid.clamp(min=1).to(dtype)[:, None, None]
    bin_size = bin_size[:, None, None]
    size = size[:, None, None]
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
    mask = inside.to(dtype) / grid_f
    return AxisSamples(low, high, (1.0 - frac) * mask, frac * mask, inside)


class LevelRoIs:
    """The RoIs of several maps taken together, map by map (``rois[i]`` ``[Ki, 5]`` sampled on ``maps[i]`` at
    ``spatial_scales[i]``): one set of per-RoI tensors, so that the per-RoI work runs once for every level.

    ``rois [K, 5]`` (their dtype is the coordinates'), ``counts`` (``Ki``), per RoI the map's ``heights`` and
    ``widths`` (int64 ``[K]``) and ``base`` (the table row of its image's first pixel, in a ``[N * H * W, C]``
    table of its map), their :class:`Geometry`, and the largest grid along each axis (``sampling_ratio`` when
    fixed): every RoI is laid out with that many samples, the extra ones dead.
    """

    def __init__(
        self,
        maps: Sequence[Tensor],
        rois: Sequence[Tensor],
        spatial_scales: Sequence[float],
        output_size: tuple[int, int],
        sampling_ratio: int,
        aligned: bool,
    ) -> None:
        device = maps[0].device
        self.counts = [r.shape[0] for r in rois]
        repeats = torch.tensor(self.counts, device=device)
        self.rois = torch.cat(list(rois))
        self.output_size = output_size
        self.heights = torch.tensor([m.shape[2] for m in maps], device=device).repeat_interleave(repeats)
        self.widths = torch.tensor([m.shape[3] for m in maps], device=device).repeat_interleave(repeats)
        scales = torch.tensor(list(spatial_scales), dtype=self.rois.dtype, device=device).repeat_interleave(repeats)
        self.geometry = roi_geometry(self.rois, *output_size, scales, sampling_ratio, aligned)
        fixed = sampling_ratio > 0  # no need to read the grids back (a device sync on a GPU)
        self.grid_h = sampling_ratio if fixed else max(int(self.geometry.grid_h.max()), 1)
        self.grid_w = sampling_ratio if fixed else max(int(self.geometry.grid_w.max()), 1)
        self.base = self.rois[:, 0].long() * (self.heights * self.widths)

    def samples_y(self) -> AxisSamples:
        g = self.geometry
        return axis_samples(
            g.start_y, g.bin_h, g.grid_h, self.output_size[0], self.grid_h, self.heights, self.rois.dtype
        )

    def samples_x(self) -> AxisSamples:
        g = self.geometry
        return axis_samples(
            g.start_x, g.bin_w, g.grid_w, self.output_size[1], self.grid_w, self.widths, self.rois.dtype
        )
