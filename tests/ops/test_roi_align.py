"""RoIAlign against a literal transcription of torchvision's CPU kernel and against torchvision's golden outputs."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import pytest
import torch

from fpn.ops.roi_align import boxes_to_rois, roi_align

GOLDENS = Path(__file__).resolve().parents[1] / "golden" / "ops_goldens.pt"
ROI_ALIGN_MODULE = sys.modules["fpn.ops.roi_align"]  # the package attribute `roi_align` is the function
INFERENCE_MODULE = sys.modules["fpn.ops.roi_align_inference"]


@pytest.fixture(scope="module")
def goldens() -> dict[str, torch.Tensor]:
    return torch.load(GOLDENS, weights_only=True)


def bilinear_reference(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """``bilinear_interpolate`` of the kernel for one sample, on a ``[C, H, W]`` map (vector over channels)."""
    height, width = plane.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(plane.shape[0], dtype=plane.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * plane[:, y_low, x_low]
        + hy * lx * plane[:, y_low, x_high]
        + ly * hx * plane[:, y_high, x_low]
        + ly * lx * plane[:, y_high, x_high]
    )


def roi_align_reference(
    features: torch.Tensor,
    rois: torch.Tensor,
    out_h: int,
    out_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """One RoI, bin and sample at a time, exactly as ``roi_align_forward_kernel_impl`` loops."""
    result = torch.zeros(rois.shape[0], features.shape[1], out_h, out_w, dtype=features.dtype)
    for n, roi in enumerate(rois.tolist()):
        plane = features[int(roi[0])]
        offset = 0.5 if aligned else 0.0
        start_w, start_h = roi[1] * spatial_scale - offset, roi[2] * spatial_scale - offset
        end_w, end_h = roi[3] * spatial_scale - offset, roi[4] * spatial_scale - offset
        roi_w, roi_h = end_w - start_w, end_h - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = torch.zeros(features.shape[1], dtype=features.dtype)
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += bilinear_reference(plane, y, x)
                result[n, :, ph, pw] = total / count
    return result


def make_rois(gen: torch.Generator, num: int, batch: int, extent_w: float, extent_h: float) -> torch.Tensor:
    """Random RoIs that start up to 4 px outside the map, plus hand-picked edge cases."""
    xy = torch.rand(num, 2, generator=gen, dtype=torch.float64) * torch.tensor([extent_w, extent_h]) - 4.0
    wh = 0.5 + torch.rand(num, 2, generator=gen, dtype=torch.float64) * torch.tensor([extent_w, extent_h]) * 0.8
    boxes = torch.cat([xy, xy + wh], dim=1)
    special = torch.tensor(
        [
            [0.0, 0.0, extent_w, extent_h],  # the whole map
            [extent_w - 3.0, extent_h - 2.0, extent_w + 9.0, extent_h + 7.0],  # across the bottom-right border
            [-12.0, -9.0, -2.5, -2.1],  # outside the map, partly beyond the -1 margin
            [5.0, 3.0, 5.0, 8.0],  # zero width
            [6.0, 4.0, 6.1, 4.2],  # tiny
            [9.0, 8.0, 4.0, 3.0],  # inverted corners
            [extent_w - 1.0, extent_h - 1.0, extent_w, extent_h],  # on the bottom-right edge
            [0.0, 0.0, 0.0, 0.0],  # a point at the origin
        ],
        dtype=torch.float64,
    )
    boxes = torch.cat([boxes, special])
    index = torch.randint(0, batch, (boxes.shape[0], 1), generator=gen).double()
    return torch.cat([index, boxes], dim=1)


PATHS = ("inference", "crop")


def pool(path: str, features: torch.Tensor, rois, *args, **kwargs) -> torch.Tensor:
    """``roi_align`` on the named path: ``inference`` (no gradient asked for: one weighted gather per level) or
    ``crop`` (features that need a gradient: the crop path with its backward), the result detached."""
    if path == "crop":
        with torch.enable_grad():
            features = features.detach().requires_grad_()
            assert not INFERENCE_MODULE.supports([features])
            return roi_align(features, rois, *args, **kwargs).detach()
    with torch.inference_mode():
        assert INFERENCE_MODULE.supports([features])
        return roi_align(features, rois, *args, **kwargs)


CONFIGS = [
    # (output size, spatial_scale, sampling_ratio, aligned)
    ((3, 4), 0.5, 2, False),
    ((3, 4), 0.5, 2, True),
    ((2, 2), 0.5, -1, False),
    ((2, 2), 0.5, 0, True),
    ((3, 2), 1.0, 1, False),
    ((2, 3), 0.25, -1, True),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("output_size,scale,ratio,aligned", CONFIGS)
def test_roi_align_matches_kernel_reference(
    output_size: tuple[int, int], scale: float, ratio: int, aligned: bool, path: str
) -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64)  # odd sizes, H != W
    rois = make_rois(gen, 10, 2, extent_w=9 / scale, extent_h=7 / scale)
    got = pool(path, features, rois, output_size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    want = roi_align_reference(features, rois, *output_size, scale, ratio, aligned)
    assert got.shape == want.shape == (rois.shape[0], 3, *output_size)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 1)])
def test_tiny_maps_match_kernel_reference(shape: tuple[int, int], path: str) -> None:
    gen = torch.Generator().manual_seed(6)
    features = torch.randn(1, 2, *shape, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, 4, 1, extent_w=float(shape[1]), extent_h=float(shape[0]))
    for ratio, aligned in ((2, False), (-1, True)):
        got = pool(path, features, rois, 2, 1.0, ratio, aligned)
        torch.testing.assert_close(
            got, roi_align_reference(features, rois, 2, 2, 1.0, ratio, aligned), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("path", PATHS)
def test_roi_align_float32_close_to_reference(path: str) -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 6, 5, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, 8, 1, extent_w=5.0, extent_h=6.0)
    want = roi_align_reference(features, rois, 2, 2, 1.0, -1, False)
    got = pool(path, features.float(), rois.float(), 2, 1.0, -1, False)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_constant_map_pools_to_the_constant_inside(path: str) -> None:
    features = torch.full((1, 2, 8, 8), 3.0)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0], [0.0, 0.0, 0.0, 8.0, 8.0]])
    for aligned in (False, True):
        out = pool(path, features, rois, 2, 1.0, 2, aligned)
        torch.testing.assert_close(out, torch.full_like(out, 3.0))


@pytest.mark.parametrize("path", PATHS)
def test_sampling_ratio_zero_and_negative_agree(path: str) -> None:
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(2, 2, 9, 11, generator=gen)
    rois = make_rois(gen, 12, 2, extent_w=22.0, extent_h=18.0).float()
    torch.testing.assert_close(pool(path, features, rois, 3, 0.5, 0), pool(path, features, rois, 3, 0.5, -1))


@pytest.mark.parametrize("path", PATHS)
def test_inverted_aligned_rois_pool_to_zero_with_adaptive_sampling(path: str) -> None:
    features = torch.randn(1, 2, 5, 5)
    rois = torch.tensor([[0.0, 4.0, 4.0, 1.0, 1.0]])
    # The kernel's grid is ceil(negative) <= 0: no samples, so zeros (and no division by zero).
    assert torch.equal(pool(path, features, rois, 2, 1.0, -1, True), torch.zeros(1, 2, 2, 2))


@pytest.mark.parametrize("ratio", [2, -1])
def test_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch, ratio: int) -> None:
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 10, 12, generator=gen)
    rois = make_rois(gen, 40, 2, extent_w=24.0, extent_h=20.0).float()
    whole = {path: pool(path, features, rois, 3, 0.5, ratio) for path in PATHS}
    monkeypatch.setattr(ROI_ALIGN_MODULE, "_MAX_CHUNK", 3)
    monkeypatch.setattr(ROI_ALIGN_MODULE, "_GATHER_BUDGET", 1)  # forces one RoI per chunk
    monkeypatch.setattr(INFERENCE_MODULE, "_PAIR_BUDGET", 1)  # one RoI's pairs at a time
    for path in PATHS:
        torch.testing.assert_close(pool(path, features, rois, 3, 0.5, ratio), whole[path], rtol=0, atol=0)


@pytest.mark.parametrize("ratio", [2, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_and_crop_paths_agree_on_several_levels(ratio: int, dtype: torch.dtype) -> None:
    """The path taken when no gradient is asked for (inference_mode, no_grad, or maps that need none) gives the
    crop path's values on a multi-level call, channels-last and NCHW maps, rows no level fills left zero."""
    gen = torch.Generator().manual_seed(8)
    maps = [
        torch.randn(2, 5, 24, 32, generator=gen, dtype=dtype),
        torch.randn(2, 5, 12, 16, generator=gen, dtype=dtype),
    ]
    maps[1] = maps[1].contiguous(memory_format=torch.channels_last)
    rois = [make_rois(gen, 30, 2, 128.0, 96.0).to(dtype), make_rois(gen, 20, 2, 128.0, 96.0).to(dtype)]
    rows = len(rois[0]) + len(rois[1]) + 2  # two rows no level fills
    order = torch.randperm(rows, generator=gen)
    positions = [order[: len(rois[0])], order[len(rois[0]) : rows - 2]]
    args = (rois, positions, rows, (3, 4), [0.25, 0.125], ratio, False)
    with torch.enable_grad():
        crop = ROI_ALIGN_MODULE.roi_align_levels([m.detach().requires_grad_() for m in maps], *args).detach()
    tolerance = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for mode in (torch.inference_mode, torch.no_grad, contextlib.nullcontext):
        with mode():
            got = ROI_ALIGN_MODULE.roi_align_levels(maps, *args)
        assert got.shape == crop.shape and got.dtype == dtype
        torch.testing.assert_close(got, crop, **tolerance)
    filled = torch.cat(positions)
    unfilled = torch.ones(rows, dtype=torch.bool)
    unfilled[filled] = False
    assert unfilled.any() and torch.equal(got[unfilled], torch.zeros_like(got[unfilled]))


def test_the_inference_path_runs_exactly_when_no_gradient_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = INFERENCE_MODULE.pool_levels
    monkeypatch.setattr(INFERENCE_MODULE, "pool_levels", lambda *args: calls.append(1) or real(*args))
    features = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]])
    for mode, needs_grad, expected in (
        (torch.inference_mode, False, 1),
        (torch.no_grad, True, 1),
        (contextlib.nullcontext, False, 1),
        (contextlib.nullcontext, True, 0),
    ):
        calls.clear()
        with mode():
            roi_align(features.clone().requires_grad_(needs_grad), rois, 2, 1.0, 2)
        assert len(calls) == expected, (mode, needs_grad)


def test_list_of_boxes_input() -> None:
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(2, 2, 6, 6, generator=gen)
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 3.0]]), torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 0.0, 3.0, 6.0]])]
    rois = boxes_to_rois(boxes)
    assert rois[:, 0].tolist() == [0.0, 1.0, 1.0]
    torch.testing.assert_close(roi_align(features, boxes, 2, 1.0, 2), roi_align(features, rois, 2, 1.0, 2))


def test_empty_rois_and_gradient() -> None:
    features = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = roi_align(features, torch.zeros(0, 5), (2, 3))
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()  # an image without RoIs must not break the backward pass
    assert features.grad is not None and torch.equal(features.grad, torch.zeros_like(features))


def test_rejects_bad_inputs() -> None:
    features = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError):
        roi_align(features, torch.tensor([[2.0, 0.0, 0.0, 1.0, 1.0]]), 2)  # batch index out of range
    with pytest.raises(ValueError):
        roi_align(features, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError):
        roi_align(features[0], torch.zeros(1, 5), 2)


@pytest.mark.parametrize("aligned,ratio", [(False, 2), (True, -1)])
def test_gradcheck(aligned: bool, ratio: int) -> None:
    features = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.2, 4.1, 3.7], [1, -1.5, 1.0, 3.0, 9.0], [0, 2.0, 2.0, 2.5, 2.2], [1, 3.0, 2.0, 5.0, 4.0]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (2, 3), 0.8, ratio, aligned), (features,))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_and_is_close_to_float32(path: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(1, 4, 10, 10, generator=gen)
    rois = make_rois(gen, 6, 1, extent_w=20.0, extent_h=20.0).float()
    low = pool(path, features.to(dtype), rois, 3, 0.5, 2)
    assert low.dtype == dtype
    ref = pool(path, features.to(dtype).float(), rois, 3, 0.5, 2)
    # The features' own rounding is the only difference: a bf16 result is within 2**-8 of the fp32 one.
    torch.testing.assert_close(low.float(), ref, rtol=1e-2, atol=1e-2)
    features.requires_grad_(True)
    roi_align(features.bfloat16(), rois, 3, 0.5, 2).float().sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


# --- torchvision goldens ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [2, -1, 0])
def test_roi_align_golden(goldens: dict[str, torch.Tensor], aligned: bool, ratio: int, path: str) -> None:
    out_h, out_w = goldens["roi_align/output_size"].tolist()
    got = pool(
        path,
        goldens["roi_align/features"],
        goldens["roi_align/rois"],
        (out_h, out_w),
        spatial_scale=float(goldens["roi_align/spatial_scale"]),
        sampling_ratio=ratio,
        aligned=aligned,
    )
    torch.testing.assert_close(got, goldens[f"roi_align/out_aligned{int(aligned)}_ratio{ratio}"], rtol=0, atol=1e-5)


def test_crop_sizes_are_padded_by_at_most_a_quarter():
    padded = ROI_ALIGN_MODULE._padded
    assert [padded(s) for s in (1, 2, 3, 16, 17, 20, 21, 33, 64, 65)] == [2, 2, 4, 16, 20, 20, 24, 40, 64, 80]
    assert all(s <= padded(s) <= max(s + 1, s * 5 // 4 + 1) for s in range(1, 300))


@pytest.mark.parametrize("path", PATHS)
def test_huge_rois_over_the_whole_map_match_the_reference(path: str):
    # Crops far beyond the chunk budget are pooled alone; adaptive grids of many samples stay exact.
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(1, 3, 40, 50, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0.0, -30.0, -20.0, 130.0, 90.0], [0.0, 2.0, 3.0, 97.0, 79.0]], dtype=torch.float64)
    for ratio in (2, 0):
        expected = roi_align_reference(features, rois, 5, 5, 0.5, ratio, False)
        torch.testing.assert_close(pool(path, features, rois, 5, 0.5, ratio), expected)


def test_levels_pool_into_one_result_with_the_same_values_and_gradients():
    from fpn.ops.roi_align import roi_align_levels

    gen = torch.Generator().manual_seed(6)
    maps = [torch.randn(2, 3, 12, 16, generator=gen, requires_grad=True), torch.randn(2, 3, 6, 8, generator=gen)]
    maps[1].requires_grad_()
    rois = [make_rois(gen, 5, 2, 64.0, 48.0).float(), make_rois(gen, 4, 2, 64.0, 48.0).float()]
    positions = [torch.tensor([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]), torch.arange(1, 24, 2)[:12]]
    rows = sum(len(r) for r in rois) + 1  # the last row is filled by no level: zeros
    got = roi_align_levels(maps, rois, positions, rows, (2, 3), [0.25, 0.125], 2, False)
    expected = torch.zeros(rows, 3, 2, 3)
    for level, scale in ((0, 0.25), (1, 0.125)):
        expected = expected.index_copy(0, positions[level], roi_align(maps[level], rois[level], (2, 3), scale, 2))
    torch.testing.assert_close(got, expected)
    weights = torch.randn(expected.shape, generator=gen)
    torch.testing.assert_close(
        torch.autograd.grad((got * weights).sum(), maps), torch.autograd.grad((expected * weights).sum(), maps)
    )
