"""The fused convolution + (add +) ReLU: equal to the separate operations, and only where it is allowed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fpn.layers.conv_pointwise import conv_relu, fusable
from fpn.layers.winograd import WinogradConv2d, Workspace


def close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return float((got - expected).abs().max()) <= 1e-6 * float(expected.abs().max())


GEOMETRIES = [  # kernel, stride, padding, bias, groups
    (1, 1, 0, True, 1),
    (3, 2, 1, False, 1),
    (7, 2, 3, True, 1),
    (3, 1, 1, True, 1),
]


def _conv_and_input(kernel, stride, padding, bias, groups, dtype=torch.float32, channels_last=True):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, kernel, stride=stride, padding=padding, bias=bias, groups=groups)
    conv = conv.to(dtype).eval().requires_grad_(False)
    x = torch.randn(2, 16, 23, 31).to(dtype)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return conv, x


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_float32_fused_equals_separate_operations_to_rounding(geometry):
    conv, x = _conv_and_input(*geometry)
    assert fusable(conv, x)
    with torch.inference_mode():
        expected = F.relu(conv(x))
        residual = torch.randn_like(expected)
        kept = residual.clone()
        expected_sum = F.relu(conv(x) + residual)
        out, out_sum = conv_relu(conv, x), conv_relu(conv, x, residual)
    # The same sums; oneDNN may order them differently in the fused kernel (seen on a 2x3 map), so to rounding.
    assert close(out, expected) and close(out_sum, expected_sum)
    assert torch.equal(residual, kept)  # the residual is read, not written
    assert out.stride() == expected.stride() and out_sum.stride() == expected.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_overwriting_the_residual_returns_it_holding_the_result(dtype):
    conv, x = _conv_and_input(1, 1, 0, True, 1, dtype=dtype)
    with torch.inference_mode():
        residual = torch.randn_like(conv(x))
        expected = conv_relu(conv, x, residual.clone())
        out = conv_relu(conv, x, residual, overwrite_residual=True)
    assert out is residual
    assert torch.equal(out, expected)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_bfloat16_fused_is_within_one_rounding_of_float32(geometry):
    conv, x = _conv_and_input(*geometry, dtype=torch.bfloat16)
    assert fusable(conv, x)
    with torch.inference_mode():
        residual = torch.randn_like(conv(x))
        out = conv_relu(conv, x, residual)
        exact = F.relu(
            F.conv2d(
                x.float(),
                conv.weight.float(),
                None if conv.bias is None else conv.bias.float(),
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            )
            + residual.float()
        )
    assert out.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits: one rounding of the result is 2**-8 of its magnitude.
    assert ((out.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_separate_operations_where_a_gradient_is_needed():
    conv, x = _conv_and_input(3, 1, 1, True, 1)
    conv.requires_grad_(True)
    assert not fusable(conv, x)
    out = conv_relu(conv, x, torch.ones(2, 32, 23, 31))
    out.sum().backward()
    assert conv.weight.grad is not None
    with torch.no_grad():
        assert fusable(conv, x)


def test_separate_operations_off_the_fused_kernels_domain():
    conv, x = _conv_and_input(3, 1, 1, True, 1, channels_last=False)
    assert not fusable(conv, x)  # NCHW: oneDNN's bfloat16 residual fusion fails there
    grouped = nn.Conv2d(16, 32, 3, padding=1, groups=2).eval().requires_grad_(False)
    assert not fusable(grouped, x.contiguous(memory_format=torch.channels_last))
    winograd = WinogradConv2d(nn.Conv2d(16, 32, 3, padding=1), Workspace()).eval().requires_grad_(False)
    assert not fusable(winograd, x.contiguous(memory_format=torch.channels_last))  # its own arithmetic
    reflect = nn.Conv2d(16, 32, 3, padding=1, padding_mode="reflect").eval().requires_grad_(False)
    assert not fusable(reflect, x.contiguous(memory_format=torch.channels_last))
    conv, x = _conv_and_input(3, 1, 1, True, 1)
    with torch.inference_mode():
        assert not fusable(conv, x.double())
        expected = F.relu(conv(x) + 1)
        # A residual in another layout falls back to the separate operations, with the same answer.
        assert torch.equal(conv_relu(conv, x, torch.ones_like(expected).contiguous()), expected)


def test_flop_counter_counts_fused_convolutions_as_plain_ones():
    from torch.utils.flop_counter import FlopCounterMode

    conv, x = _conv_and_input(3, 2, 1, True, 1)
    counts = []
    with torch.inference_mode():
        residual = torch.zeros_like(conv(x))
        for run in (lambda: F.relu(conv(x)), lambda: conv_relu(conv, x), lambda: conv_relu(conv, x, residual)):
            counter = FlopCounterMode(display=False)
            with counter:
                run()
            counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts == [counts[0]] * 3
