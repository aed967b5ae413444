"""Winograd F(4x4, 3x3) against PyTorch's direct convolution and against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpn.layers.winograd as winograd_module
from fpn.layers.winograd import WinogradConv2d, Workspace, transform_weight, use_winograd, winograd_conv3x3


@pytest.fixture(params=[2048, 5], ids=["one-chunk", "chunks-of-5-tiles"])
def chunking(request, monkeypatch):
    """Every map in one chunk of tile rows (the default at these sizes) or in many (as large maps are)."""
    monkeypatch.setattr(winograd_module, "TILES_PER_CHUNK", request.param)
    return request.param


@pytest.fixture
def small_maps_too(monkeypatch):
    """The small maps of these tests through Winograd, in training too (real ones go direct below a size)."""
    monkeypatch.setattr(WinogradConv2d, "min_tiles_training", 1)
    monkeypatch.setattr(WinogradConv2d, "min_tiles_inference", 1)


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
def test_equals_the_direct_convolution_to_float32_rounding(n, c, k, h, w, chunking):
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


def test_either_memory_format_gives_the_same_result_in_that_format():
    x, weight, bias = conv_case(0, 2, 8, 8, 12, 9)
    transformed = transform_weight(weight)
    a = winograd_conv3x3(x, transformed, bias)
    b = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), transformed, bias)
    assert torch.equal(a, b)
    assert b.is_contiguous(memory_format=torch.channels_last) and a.is_contiguous()  # layout kept


def test_workspace_is_reused_across_calls_and_smaller_shapes():
    workspace = Workspace()
    x, weight, _ = conv_case(1, 1, 8, 8, 16, 16)
    transformed = transform_weight(weight)
    winograd_conv3x3(x, transformed, workspace=workspace)
    buffers = {role: buffer.data_ptr() for role, buffer in workspace.buffers.items()}
    small = winograd_conv3x3(x[..., :9, :5], transformed, workspace=workspace)
    assert {role: buffer.data_ptr() for role, buffer in workspace.buffers.items()} == buffers
    expected = F.conv2d(x[..., :9, :5], weight, padding=1)
    torch.testing.assert_close(small, expected, atol=3e-5 * float(expected.abs().max()), rtol=0)


def test_transform_weight_checks_the_kernel_size():
    assert transform_weight(torch.randn(5, 3, 3, 3)).shape == (36, 5, 3)
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
    assert all(isinstance(m, nn.Conv2d) for m in (model[0], model[4][0]))  # still convolutions to the rest
    assert isinstance(model[4][0], WinogradConv2d)
    assert model[0].workspace is model[4][0].workspace  # one workspace per model


def test_module_matches_its_convolution_and_small_maps_go_direct():
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    swapped = WinogradConv2d(conv, Workspace())
    x = torch.randn(1, 128, 24, 22)  # 36 tiles: enough for inference, too few for training
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), conv(x), atol=1e-4, rtol=0)
        assert swapped.workspace.buffers != {}  # it ran the Winograd path
        tiny = torch.randn(1, 128, 4, 4)  # one tile: the direct convolution, bit for bit
        assert torch.equal(swapped(tiny), conv(tiny))
    x.requires_grad_()
    assert torch.equal(swapped(x), conv(x))  # in training, 36 tiles go direct too
    with pytest.raises(ValueError, match="3x3 stride-1"):
        WinogradConv2d(nn.Conv2d(128, 128, 3, stride=2, padding=1), Workspace())


@pytest.mark.parametrize("n, c, k, h, w", [(1, 3, 2, 5, 6), (2, 2, 3, 9, 4), (1, 2, 2, 14, 9)])
def test_backward_is_the_exact_adjoint_of_the_forward(n, c, k, h, w, chunking):
    # In float64, gradcheck compares the hand-written transposed transforms with finite differences.
    from fpn.layers.winograd import _WinogradConvFunction

    x, weight, bias = (t.double().requires_grad_() for t in conv_case(3, n, c, k, h, w))

    def conv(x, weight, bias):
        return _WinogradConvFunction.apply(x, weight, bias, Workspace())

    assert torch.autograd.gradcheck(conv, (x, weight, bias))


@pytest.mark.parametrize("size", [(11, 14), (12, 16)], ids=["partial-tiles", "whole-tiles"])
def test_training_gradients_equal_the_direct_convolutions(size, chunking, small_maps_too, monkeypatch):
    backward_chunks = []  # the Winograd-domain backward ran, chunk by chunk
    adjoint = winograd_module.output_transform_adjoint
    monkeypatch.setattr(
        winograd_module, "output_transform_adjoint", lambda *a: backward_chunks.append(a[2:4]) or adjoint(*a)
    )
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    swapped = WinogradConv2d(conv, Workspace())
    assert swapped.weight is conv.weight and list(swapped.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 128, *size).contiguous(memory_format=torch.channels_last)
    grad_y = torch.randn(2, 128, *size)
    grads = []
    for module in (conv, swapped):
        x_ = x.clone().requires_grad_()
        conv.zero_grad()
        y = module(x_).relu_()  # an in-place op on the result, as the backbone's ReLUs do
        y.backward(grad_y)
        grads.append((y.detach(), x_.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    (y0, gx0, gw0, gb0), (y1, gx1, gw1, gb1) = grads
    tiles_h = -(-size[0] // 4)
    assert backward_chunks[0][0] == 0 and backward_chunks[-1][1] == tiles_h  # every tile row, in order
    assert len(backward_chunks) == (1 if chunking > 2 * 4 * tiles_h else tiles_h)  # chunks of 5 tiles: one row
    assert y1.is_contiguous(memory_format=torch.channels_last)
    for got, expected in ((y1, y0), (gx1, gx0), (gw1, gw0), (gb1, gb0)):
        torch.testing.assert_close(got, expected, atol=3e-5 * float(expected.abs().max()), rtol=0)


def test_weight_changes_are_seen_and_autocast_takes_the_direct_path(small_maps_too):
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    swapped = WinogradConv2d(conv, Workspace())
    x = torch.randn(1, 128, 12, 12)
    with torch.no_grad():
        before = swapped(x)
        conv.weight.mul_(2)  # e.g. an optimizer step: the cached transform must follow
        torch.testing.assert_close(swapped(x) - conv.bias.view(-1, 1, 1), 2 * (before - conv.bias.view(-1, 1, 1)))
        assert swapped(x).is_contiguous()  # NCHW in, NCHW out
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(swapped(x), conv(x))


@pytest.mark.parametrize("made_in", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("run_in", ["inference_mode", "no_grad"])
def test_weights_and_workspace_made_in_one_mode_run_in_the_other(made_in, run_in, small_maps_too):
    """``fpn detect`` folds weights under inference_mode (inference tensors: no version counter, no in-place
    writes outside the mode); a user's loop may run them under no_grad, or the other way round."""
    modes = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}
    x, weight, bias = conv_case(7, 1, 8, 8, 12, 12)
    with modes[made_in]():
        conv = nn.Conv2d(8, 8, 3, padding=1)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        module = WinogradConv2d(conv, Workspace())
        first = module(x)  # the workspace is allocated here, in the first mode
    with modes[run_in]():
        again = module(x)
    torch.testing.assert_close(first, F.conv2d(x, weight, bias, padding=1), rtol=0, atol=1e-4)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_inference_weights_changed_in_place_are_seen(small_maps_too):
    """``load_state_dict`` under inference_mode rewrites inference-tensor weights in place, unversioned."""
    x, weight, bias = conv_case(8, 1, 8, 8, 12, 12)
    with torch.inference_mode():
        module = WinogradConv2d(nn.Conv2d(8, 8, 3, padding=1), Workspace())
        module(x)
        module.load_state_dict({"weight": weight, "bias": bias})
        assert module.weight.is_inference()
        changed = module(x)
    torch.testing.assert_close(changed, F.conv2d(x, weight, bias, padding=1), rtol=0, atol=1e-4)
