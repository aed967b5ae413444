"""GroupNorm with a closed-form backward on channels-last maps: nn.GroupNorm's results, its own rule of use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fpn.layers import group_norm as gn
from fpn.layers.group_norm import GroupNorm, _ChannelsLastGroupNorm


def _norm(groups: int, channels: int) -> GroupNorm:
    norm = GroupNorm(groups, channels)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1.0, 1.0)
    return norm


def _map(shape, *, channels_last=True, scale=3.0, shift=0.5) -> torch.Tensor:
    x = torch.randn(shape) * scale + shift  # an offset mean, so that the mean terms of the backward matter
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return x.requires_grad_(True)


@pytest.mark.parametrize(("shape", "groups"), [((2, 16, 72, 64), 16), ((2, 64, 40, 30), 32), ((1, 128, 24, 24), 8)])
def test_closed_form_backward_matches_the_native_one(shape, groups):
    torch.manual_seed(0)
    norm, x = _norm(groups, shape[1]), _map(shape)
    assert gn._use_closed_form(norm, x)
    out = norm(x)
    assert type(out.grad_fn).__name__ == "_ChannelsLastGroupNormBackward"
    expected = F.group_norm(x, groups, norm.weight, norm.bias, norm.eps)
    assert torch.equal(out, expected)  # the forward is the native kernel
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, norm.weight, norm.bias), grad)
    native = torch.autograd.grad(expected, (x, norm.weight, norm.bias), grad)
    for got, want in zip(ours, native):
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert ours[0].is_contiguous(memory_format=torch.channels_last)


def test_closed_form_passes_gradcheck_in_float64():
    torch.manual_seed(0)
    x = _map((2, 8, 5, 7)).detach().double().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    weight = torch.rand(8, dtype=torch.float64, requires_grad=True)
    bias = torch.rand(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: _ChannelsLastGroupNorm.apply(*t, 4, 1e-5), (x, weight, bias))


def test_native_kernel_where_the_closed_form_does_not_pay_or_apply():
    norm = _norm(8, 16)
    small = _map((2, 16, 8, 8))  # below CLOSED_FORM_MIN_VALUES per image
    nchw = _map((2, 16, 72, 64), channels_last=False)
    large = _map((2, 16, 72, 64))
    assert not gn._use_closed_form(norm, small)
    assert not gn._use_closed_form(norm, nchw)
    with torch.no_grad():
        assert not gn._use_closed_form(norm, large)
    assert not gn._use_closed_form(GroupNorm(8, 16, affine=False), large)
    assert type(norm(nchw).grad_fn).__name__ != "_ChannelsLastGroupNormBackward"


def test_bfloat16_maps_under_autocast_get_the_native_forward_and_a_float32_backward():
    torch.manual_seed(0)
    norm = _norm(16, 64)
    x = _map((2, 64, 40, 30)).detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gn._use_closed_form(norm, x)
        out = norm(x)
        expected = F.group_norm(x, 16, norm.weight, norm.bias, norm.eps)  # autocast keeps it in bfloat16
    assert out.dtype == expected.dtype == torch.bfloat16 and torch.equal(out, expected)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, norm.weight, norm.bias), grad)
    native = torch.autograd.grad(expected, (x, norm.weight, norm.bias), grad)
    assert [g.dtype for g in ours] == [g.dtype for g in native] == [torch.bfloat16, torch.float32, torch.float32]
    # The same gradients as the float32 closed form on the widened map, rounded once to bfloat16 ...
    wide = x.detach().float().requires_grad_(True)
    reference = torch.autograd.grad(norm(wide), (wide, norm.weight, norm.bias), grad.float())
    assert torch.equal(ours[0], reference[0].bfloat16())
    # ... and the native bfloat16 kernel's to within bfloat16 rounding (8 significant bits).
    for got, want in zip(ours, native):
        assert float((got.float() - want.float()).abs().max()) <= 2**-7 * float(want.float().abs().max())


def test_frozen_affine_parameters_get_no_gradient_and_state_dict_is_nn_groupnorms():
    norm, x = _norm(8, 16), _map((2, 16, 72, 64))
    norm.requires_grad_(False)
    norm(x).square().sum().backward()
    assert x.grad is not None and norm.weight.grad is None and norm.bias.grad is None
    plain = nn.GroupNorm(8, 16)
    plain.load_state_dict(norm.state_dict())  # same keys and shapes: checkpoints load either way
    assert isinstance(norm, nn.GroupNorm)
