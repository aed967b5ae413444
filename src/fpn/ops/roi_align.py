"""RoIAlign (He et al., Mask R-CNN) in plain PyTorch, matching torchvision's CPU kernel sample for sample.

Each output bin averages ``grid_h x grid_w`` bilinear samples at regularly spaced points inside it; the
samples' positions, the bilinear rule at the map border and the averaging count are those of
``torchvision/csrc/ops/cpu/roi_align_kernel.cpp`` (:mod:`fpn.ops.roi_sampling`), so float32 results agree to
rounding (~1e-7). There are two paths with the same results:

- when nothing needs a gradient (inference), every bin is one weighted sum of map rows, one embedding-bag
  kernel per level (:mod:`fpn.ops.roi_align_inference`);
- otherwise the crop path of this module, which has a backward. Interpolation and the bin average are
  separable: per channel, a RoI's output is ``Ay @ crop @ Ax^T``, where ``crop`` is the patch of the map its
  samples touch and ``Ay [out_h, crop_h]``, ``Ax [out_w, crop_w]`` hold every sample's bilinear weights along
  one axis (built from per-axis taps, ``[R, out, grid]``). So each map pixel of the crop is read once, with
  all channels, from a ``[N * H * W, C]`` view of the features, and the weighting is two batched matrix
  products. RoIs are grouped by padded crop size so that one chunk is one gather. The backward pass is
  written by hand (:class:`_PoolCrops`), as torchvision's kernel is: the transposed products, then a
  scatter-add of each chunk into one gradient map per level, so that neither pass holds more than one chunk
  of crops.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from fpn.ops import roi_align_inference
from fpn.ops.roi_sampling import AxisSamples, LevelRoIs

__all__ = ["boxes_to_rois", "roi_align", "roi_align_levels"]

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
    positions = torch.arange(num_rois, device=features.device)
    return roi_align_levels(
        [features], [rois], [positions], num_rois, (out_h, out_w), [spatial_scale], sampling_ratio, aligned
    )


def roi_align_levels(
    maps: Sequence[Tensor],
    rois: Sequence[Tensor],
    positions: Sequence[Tensor],
    num_rois: int,
    output_size: tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of several maps into one ``[num_rois, C, out_h, out_w]`` result (the multi-scale pooler's work).

    ``rois[i]`` (``[Ki, 5]``, valid batch indices, float32/64) are pooled from ``maps[i]`` at
    ``spatial_scales[i]`` into the result's rows ``positions[i]``; rows no level fills stay zero. Writing
    every level straight into one buffer saves the concatenation and reordering copies of a per-level
    pooling (each as large as the result, 51 MB for 1000 RoIs of 256 x 7 x 7). The per-RoI work (sampling
    taps, crop sizes, the plan) runs once over every level's RoIs together: each call has a fixed cost that
    a handful of levels would otherwise pay each (most of the pooling time for 150 RoIs).

    When nothing needs a gradient, :func:`fpn.ops.roi_align_inference.pool_levels` computes it (the same
    values to rounding, as a channels-last view); otherwise the crop path, which has a backward.
    """
    out_h, out_w = output_size
    first = maps[0]
    coord_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    present = [i for i, level_rois in enumerate(rois) if level_rois.shape[0] > 0]
    if not present:
        # Keep the result attached to the graph so that a loss over zero RoIs still backpropagates (zeros).
        zeros = first.new_zeros(num_rois, first.shape[1], out_h, out_w)
        return zeros + sum(m.flatten()[:0].sum() for m in maps)
    inference = roi_align_inference.supports(maps)
    maps = [maps[i] for i in present]
    level_rois = LevelRoIs(
        maps,
        [rois[i].to(coord_dtype) for i in present],
        [spatial_scales[i] for i in present],
        output_size,
        sampling_ratio,
        aligned,
    )
    positions = torch.cat([positions[i] for i in present])
    if inference:
        return roi_align_inference.pool_levels(maps, level_rois, positions, num_rois)
    jobs = _jobs(maps, level_rois, positions)
    # [N * H * W, C] per map: one row per feature-map position (a view for channels-last features).
    tables = [m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps]
    return _PoolCrops.apply((num_rois, out_h, out_w), coord_dtype, jobs, *tables)


def _jobs(maps: Sequence[Tensor], level_rois: LevelRoIs, positions: Tensor) -> list[list[_Chunk]]:
    """Per map, the chunks that pool its RoIs (``positions``: every RoI's output row, maps in order)."""
    device = positions.device
    taps_y, taps_x = _axis_taps(level_rois.samples_y()), _axis_taps(level_rois.samples_x())
    base = level_rois.base  # the RoI's image's first row in its map's table
    counts = level_rois.counts

    order, chunks = _grouping(counts, taps_y.span.cpu(), taps_x.span.cpu(), maps[0].shape[1])
    # Every per-RoI tensor in plan order once; per map, the weight matrices and crop rows and columns at its
    # largest crop, so that a chunk takes slices (views) of them instead of building its own.
    order = order.to(device)
    taps_y, taps_x = taps_y.select(order), taps_x.select(order)
    base, positions = base[order], positions[order]
    jobs: list[list[_Chunk]] = [[] for _ in maps]
    level_starts = [0, *itertools.accumulate(counts)]
    for level, features in enumerate(maps):
        level_chunks = [chunk for chunk in chunks if chunk[0] == level]
        low, high = level_starts[level], level_starts[level + 1]
        crop_h, crop_w = max(chunk[3] for chunk in level_chunks), max(chunk[4] for chunk in level_chunks)
        weights_y = taps_y.slice(low, high).matrix(crop_h)  # [K_l, out_h, crop_h]
        weights_x = taps_x.slice(low, high).matrix(crop_w)  # [K_l, out_w, crop_w]
        rows, cols = _crop_rows_cols(
            base[low:high], taps_y.first[low:high], taps_x.first[low:high], (crop_h, crop_w), features.shape[2:]
        )
        for _, start, stop, h, w in level_chunks:
            first, last = start - low, stop - low
            index = rows[first:last, :h, None] + cols[first:last, None, :w]  # [R, h, w] rows of the table
            weights = weights_y[first:last, :, :h], weights_x[first:last, :, :w]
            jobs[level].append(_Chunk(positions[start:stop], *weights, index))
    return jobs


class _Chunk:
    """RoIs pooled together: their positions in the output, the bins' weights of their crops' pixels along each
    axis (``weights_y [R, out_h, crop_h]``, ``weights_x [R, out_w, crop_w]``) and crop rows of the table."""

    def __init__(self, positions: Tensor, weights_y: Tensor, weights_x: Tensor, index: Tensor) -> None:
        self.positions, self.weights_y, self.weights_x, self.index = positions, weights_y, weights_x, index


class _PoolCrops(torch.autograd.Function):
    """Chunk by chunk: gather the crops, weigh them into bins; backward scatters back, chunk by chunk.

    Written by hand (as torchvision's kernel is) so that neither pass holds more than one chunk's crops
    (``_GATHER_BUDGET``) and backward accumulates every chunk into one gradient map per level (autograd
    through a gather would allocate a zero map per chunk, or keep every crop alive at once).
    """

    @staticmethod
    def forward(ctx, shape: tuple[int, int, int], dtype: torch.dtype, jobs: list, *tables: Tensor) -> Tensor:
        num, out_h, out_w = shape
        # NCHW, contiguous: the box head flattens it without a copy (51 MB for 1024 RoIs of 256 x 7 x 7).
        pooled = tables[0].new_zeros(num, tables[0].shape[1], out_h, out_w)
        for table, level_jobs in zip(tables, jobs):
            for job in level_jobs:
                values = table.index_select(0, job.index.reshape(-1))
                bins = _weigh(values, job.weights_y, job.weights_x, dtype)
                pooled[job.positions] = bins.permute(0, 3, 1, 2).to(pooled.dtype)
        ctx.jobs, ctx.dtype = jobs, dtype
        ctx.tables = [(table.shape, table.dtype) for table in tables]
        return pooled

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        grads = []
        for (table_shape, table_dtype), level_jobs in zip(ctx.tables, ctx.jobs):
            # Accumulate in the sampling precision: bf16 sums of overlapping crops would lose the small terms.
            grad_table = grad.new_zeros(table_shape, dtype=ctx.dtype)
            for job in level_jobs:
                crop_h, crop_w = job.index.shape[1:]
                num, channels, out_h, out_w = len(job.positions), *grad.shape[1:]
                g = grad[job.positions].permute(0, 2, 3, 1).to(ctx.dtype).reshape(num, out_h, out_w * channels)
                along_x = torch.bmm(job.weights_y.transpose(1, 2), g)  # [R, crop_h, out_w * C]
                weight_x = job.weights_x.transpose(1, 2)  # [R, crop_w, out_w]
                weight_x = weight_x[:, None].expand(num, crop_h, crop_w, out_w).reshape(num * crop_h, crop_w, out_w)
                values = torch.bmm(weight_x, along_x.view(num * crop_h, out_w, channels))  # [R * crop_h, crop_w, C]
                grad_table.index_add_(0, job.index.reshape(-1), values.view(-1, channels))
            grads.append(grad_table.to(table_dtype))
        return (None, None, None, *grads)


class _Taps:
    """Bilinear taps of every (RoI, bin, sample) along one axis, relative to the RoI's crop of the map.

    ``low``/``high`` ``[K, out, grid]`` are indices into the crop that starts at ``first [K]`` and spans
    ``span [K]`` map pixels; ``w_low``/``w_high`` their weights, already divided by the RoI's sample count
    along this axis (so the product of the two axes' weights carries torchvision's ``1 / count``).
    """

    def __init__(self, first: Tensor, span: Tensor, low: Tensor, high: Tensor, w_low: Tensor, w_high: Tensor):
        self.first, self.span = first, span
        self.low, self.high, self.w_low, self.w_high = low, high, w_low, w_high

    def select(self, idx: Tensor) -> _Taps:
        return _Taps(self.first[idx], self.span[idx], self.low[idx], self.high[idx], self.w_low[idx], self.w_high[idx])

    def slice(self, start: int, stop: int) -> _Taps:
        """The RoIs ``start:stop`` (views)."""
        fields = (self.first, self.span, self.low, self.high, self.w_low, self.w_high)
        return _Taps(*(field[start:stop] for field in fields))

    def matrix(self, span: int) -> Tensor:
        """``[R, out, span]``: the weight of each crop pixel in each output bin (interpolation and averaging)."""
        num, out, _ = self.low.shape
        weights = self.low.new_zeros(num, out, span, dtype=self.w_low.dtype)
        weights.scatter_add_(2, self.low, self.w_low)
        return weights.scatter_add_(2, self.high, self.w_high)


def _axis_taps(samples: AxisSamples) -> _Taps:
    """The taps along one axis (see :class:`_Taps`) of the samples of every RoI.

    Dead samples (:func:`~fpn.ops.roi_sampling.axis_samples`) get zero weights and are kept out of the crop.
    """
    inside, low, high = samples.inside, samples.low, samples.high
    # The crop: from the lowest to the highest pixel any live sample touches (one pixel if none does).
    any_inside = inside.flatten(1).any(dim=1)
    first = torch.where(inside, low, torch.iinfo(low.dtype).max).flatten(1).amin(dim=1)
    last = torch.where(inside, high, -1).flatten(1).amax(dim=1)
    first = torch.where(any_inside, first, 0)
    span = torch.where(any_inside, last - first + 1, 1)
    offset = first[:, None, None]
    # Dead samples point at the crop's first pixel with weight 0, so every index stays inside the crop.
    low = torch.where(inside, low - offset, 0)
    high = torch.where(inside, high - offset, 0)
    return _Taps(first, span, low, high, samples.w_low, samples.w_high)


def _padded(span: int) -> int:
    """Crop sizes are rounded up (to even sizes, then multiples of 4 above 16, 8 above 32, ...) so that RoIs
    of similar size share a chunk; the padding adds at most a quarter per axis (an eighth on average)."""
    step = 2 if span <= 16 else 1 << ((span - 1).bit_length() - 3)
    return -(-span // step) * step


def _grouping(
    counts: list[int], span_h: Tensor, span_w: Tensor, channels: int
) -> tuple[Tensor, list[tuple[int, int, int, int, int]]]:
    """Processing order (``[K]``, on the CPU) of RoIs that come map by map (``counts[i]`` from map ``i``) and the
    chunks ``(map, start, stop, crop_h, crop_w)`` of that order.

    Crop sizes are rounded by :func:`_padded`; RoIs of the same map and padded crop size are adjacent and share a
    chunk of at most ``_MAX_CHUNK`` RoIs and, where possible, ``_GATHER_BUDGET`` gathered elements (a huge crop
    is processed alone, whatever it costs).
    The loop runs over distinct (map, crop size) pairs, not over RoIs.
    """
    padded_h, padded_w = _rounded(span_h), _rounded(span_w)
    high, wide = int(padded_h.max()) + 1, int(padded_w.max()) + 1
    level = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    key = (level * high + padded_h) * wide + padded_w
    order = torch.argsort(key, stable=True)
    values, runs = torch.unique_consecutive(key[order], return_counts=True)
    chunks = []
    start = 0
    for value, count in zip(values.tolist(), runs.tolist()):
        level_index, crop = divmod(value, high * wide)
        crop_h, crop_w = divmod(crop, wide)
        step = max(1, min(_MAX_CHUNK, _GATHER_BUDGET // (crop_h * crop_w * channels)))
        for first in range(start, start + count, step):
            chunks.append((level_index, first, min(first + step, start + count), crop_h, crop_w))
        start += count
    return order, chunks


def _rounded(spans: Tensor) -> Tensor:
    """:func:`_padded` of every span (int64, CPU), computed once per distinct value."""
    values, inverse = torch.unique(spans, return_inverse=True)
    return torch.tensor([_padded(v) for v in values.tolist()], dtype=torch.int64)[inverse]


def _crop_rows_cols(
    base: Tensor, first_y: Tensor, first_x: Tensor, crop: tuple[int, int], map_size: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Table rows of each RoI's crop rows (``[R, crop_h]``, its image's ``base`` included) and crop columns
    (``[R, crop_w]``): their sum ``rows[:, :, None] + cols[:, None, :]`` indexes the crop's pixels.

    A crop starts at the first pixel its RoI's samples touch; padding beyond the map is clamped onto it
    (those pixels get zero weight in :func:`_weigh`).
    """
    (crop_h, crop_w), (height, width) = crop, map_size
    rows = (first_y[:, None] + torch.arange(crop_h, device=base.device)).clamp_(max=height - 1)
    cols = (first_x[:, None] + torch.arange(crop_w, device=base.device)).clamp_(max=width - 1)
    return rows.mul_(width).add_(base[:, None]), cols


def _weigh(values: Tensor, weights_y: Tensor, weights_x: Tensor, dtype: torch.dtype) -> Tensor:
    """Pool ``R`` RoIs from their gathered crops ``[R * crop_h * crop_w, C]`` -> ``[R, out_h, out_w, C]``.

    Bilinear interpolation and the bin average are separable, so a RoI's output is ``Ay @ crop @ Ax^T`` per
    channel, with ``Ay = weights_y [R, out_h, crop_h]`` and ``Ax = weights_x [R, out_w, crop_w]`` holding every
    sample's weights: two batched matrix products. The crop's padding (beyond the map or the RoI) has zero weight.
    """
    num, out_w, crop_w = weights_x.shape
    crop_h = weights_y.shape[2]
    # Low-precision features are widened after the gather so that the arithmetic runs in `dtype`.
    values = values.view(num * crop_h, crop_w, -1).to(dtype)
    weight_x = weights_x[:, None].expand(num, crop_h, out_w, crop_w).reshape(num * crop_h, out_w, crop_w)
    along_x = torch.bmm(weight_x, values).view(num, crop_h, -1)  # [R, crop_h, out_w * C]
    pooled = torch.bmm(weights_y, along_x)  # [R, out_h, out_w * C]
    return pooled.view(num, pooled.shape[1], out_w, -1)
