"""Winograd F(4x4, 3x3) against PyTorch's direct convolution and against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fpn.ops.winograd import WinogradConv2d, Workspace, transform_weight, use_winograd, winograd_conv3x3


def conv_case(seed: int, n: int, c: int, k: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
    bias = torch.randn(k, generator=g)
    return x, weight, bias


@pytest.mark.parametrize(
    "n, c, k, h, w",
    [
        (1, 16, 24, 8, 8),  # whole tiles
        (2, 8, 8, 13, 7),  # partial tiles on both edges, a batch
        (1, 4, 6, 1, 1),  # one pixel: all padding
        (1, 32, 16, 23, 41),
    ],
)
def test_equals_the_direct_convolution_to_float32_rounding(n, c, k, h, w):
    x, weight, bias = conv_case(n * h + w, n, c, k, h, w)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    direct = F.conv2d(x, weight, bias, padding=1)
    got = winograd_conv3x3(x, transform_weight(weight), bias)
    assert got.shape == reference.shape and got.dtype == torch.float32
    scale = reference.abs().max()
    direct_error = float((direct.double() - reference).abs().max() / scale)
    winograd_error = float((got.double() - reference).abs().max() / scale)
    # Measured: ~1e-5 of the range against ~2e-6 for the direct convolution; a wrong tap would be ~1.
    assert winograd_error < 5e-5, (winograd_error, direct_error)


def test_any_memory_format_in_channels_last_out():
    x, weight, bias = conv_case(0, 2, 8, 8, 12, 9)
    transformed = transform_weight(weight)
    a = winograd_conv3x3(x, transformed, bias)
    b = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), transformed, bias)
    assert torch.equal(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)


def test_workspace_is_reused_across_calls_and_smaller_shapes():
    workspace = Workspace()
    x, weight, _ = conv_case(1, 1, 8, 8, 16, 16)
    transformed = transform_weight(weight)
    winograd_conv3x3(x, transformed, workspace=workspace)
    buffers = {role: buffer.data_ptr() for role, buffer in workspace.buffers.items()}
    small = winograd_conv3x3(x[..., :9, :5], transformed, workspace=workspace)
    assert {role: buffer.data_ptr() for role, buffer in workspace.buffers.items()} == buffers
    torch.testing.assert_close(small, F.conv2d(x[..., :9, :5], weight, padding=1), atol=1e-5, rtol=0)


def test_transform_weight_checks_the_kernel_size():
    assert transform_weight(torch.randn(5, 3, 3, 3)).shape == (36, 5, 3, 1, 1)
    with pytest.raises(ValueError, match="3x3"):
        transform_weight(torch.randn(5, 3, 5, 5))


def test_use_winograd_swaps_only_wide_3x3_stride_1_convolutions():
    model = nn.Sequential(
        nn.Conv2d(128, 128, 3, padding=1),  # swapped
        nn.Conv2d(128, 128, 3, padding=1, stride=2),  # stride 2
        nn.Conv2d(128, 128, 1),  # 1x1
        nn.Conv2d(64, 64, 3, padding=1),  # too narrow
        nn.Sequential(nn.Conv2d(128, 256, 3, padding=1, bias=False)),  # swapped, nested
        nn.Conv2d(128, 128, 3, padding=2, dilation=2),  # dilated
    )
    assert use_winograd(model) == 2
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["WinogradConv2d", "Conv2d", "Conv2d", "Conv2d", "Sequential", "Conv2d"]
    assert isinstance(model[4][0], WinogradConv2d)
    assert model[0].workspace is model[4][0].workspace  # one workspace per model


def test_module_matches_its_convolution_and_falls_back_where_it_must():
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    swapped = WinogradConv2d(conv, Workspace())
    x = torch.randn(1, 128, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), conv(x), atol=1e-4, rtol=0)
        assert swapped.workspace.buffers != {}  # it ran the Winograd path
        tiny = torch.randn(1, 128, 4, 4)  # below min_pixels: the direct convolution, bit for bit
        assert torch.equal(swapped(tiny), conv(tiny))
    # With gradients wanted, the direct convolution runs (and the gradient reaches the weight).
    swapped(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="3x3 stride-1"):
        WinogradConv2d(nn.Conv2d(128, 128, 3, stride=2, padding=1), Workspace())
