"""FPN equals the paper's formulas computed directly on the same weights, for even and odd sizes."""

import pytest
import torch
import torch.nn.functional as F

from fpn.levels import level
from fpn.pyramids import FPN

IN_LEVELS = [level("c2", 8), level("c3", 16), level("c4", 24), level("c5", 32)]


def bottom_up(size):
    """Fake C2..C5 with the backbone's rounding: level k is ceil(size / 2^k)."""
    torch.manual_seed(0)
    return {lv.name: torch.randn(2, lv.channels, *[-(-s // lv.stride) for s in size]) for lv in IN_LEVELS}


def nearest_up(x, size):
    """Nearest-neighbour resize by explicit index arithmetic: output pixel i reads input floor(i * in / out)."""
    rows = (torch.arange(size[0]) * x.shape[-2] // size[0]).long()
    cols = (torch.arange(size[1]) * x.shape[-1] // size[1]).long()
    return x[..., rows, :][..., :, cols]


def conv(module, x):
    return F.conv2d(x, module.weight, module.bias, padding=module.weight.shape[-1] // 2)


@pytest.mark.parametrize("size", [(64, 96), (67, 93), (333, 517)])
def test_fpn_equals_the_papers_equations(size):
    model = FPN(IN_LEVELS, 16, extra="pool")
    for p in model.parameters():  # non-zero biases so that a missing bias term would show
        torch.nn.init.normal_(p, std=0.1)
    c = bottom_up(size)
    out = model(c)
    lat = lambda k: conv(model.lateral[f"c{k}"], c[f"c{k}"])  # noqa: E731
    smooth = lambda k, m: conv(model.smooth[f"p{k}"], m)  # noqa: E731
    merged = {5: lat(5)}
    for k in (4, 3, 2):
        merged[k] = lat(k) + nearest_up(merged[k + 1], c[f"c{k}"].shape[-2:])
    expected = {f"p{k}": smooth(k, merged[k]) for k in (2, 3, 4, 5)}
    expected["p6"] = expected["p5"][..., ::2, ::2]  # P6 = subsample(P5)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, rtol=1e-5, atol=1e-5, msg=name)


def test_top_down_only_has_no_lower_laterals():
    model = FPN(IN_LEVELS, 16, extra="none", laterals=False)
    assert list(model.lateral) == ["c5"]
    c = bottom_up((64, 64))
    out = model(c)
    m5 = conv(model.lateral["c5"], c["c5"])
    m4 = nearest_up(m5, c["c4"].shape[-2:])
    torch.testing.assert_close(out["p4"], conv(model.smooth["p4"], m4))


def test_finest_only_predicts_from_p2_alone():
    model = FPN(IN_LEVELS, 16, outputs=("p2",))
    assert [lv.name for lv in model.levels] == ["p2"] and list(model.smooth) == ["p2"]
    assert list(model(bottom_up((64, 64)))) == ["p2"]


@pytest.mark.parametrize("extra, source", [("p6p7-c5", "c5"), ("p6p7-p5", "p5")])
def test_p6_p7_from_c5_or_p5(extra, source):
    model = FPN(IN_LEVELS, 16, extra=extra)
    c = bottom_up((67, 93))
    out = model(c)
    base = c["c5"] if source == "c5" else out["p5"]
    p6 = F.conv2d(base, model.extra.p6.weight, model.extra.p6.bias, stride=2, padding=1)
    torch.testing.assert_close(out["p6"], p6)
    p7 = F.conv2d(F.relu(p6), model.extra.p7.weight, model.extra.p7.bias, stride=2, padding=1)
    torch.testing.assert_close(out["p7"], p7)
    assert [lv.name for lv in model.levels] == ["p2", "p3", "p4", "p5", "p6", "p7"]


@pytest.mark.parametrize("size", [(8, 12), (7, 11)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_add_upsampled_equals_interpolate_and_add_with_gradients(size, channels_last):
    from fpn.pyramids.fpn import add_upsampled

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    coarse = torch.randn(2, 3, -(-size[0] // 2), -(-size[1] // 2)).contiguous(memory_format=fmt).requires_grad_()
    lateral_in = torch.randn(2, 3, *size).contiguous(memory_format=fmt).requires_grad_()
    expected = lateral_in * 2 + nearest_up(coarse, size)
    got = add_upsampled(lateral_in * 2, coarse)  # the lateral is a fresh map, as a convolution's output is
    assert torch.equal(got, expected)
    with torch.no_grad():  # the in-place block path
        assert torch.equal(add_upsampled(lateral_in * 2, coarse), expected)
    weights = torch.randn(expected.shape)
    grads = torch.autograd.grad((expected * weights).sum(), (coarse, lateral_in))
    torch.testing.assert_close(torch.autograd.grad((got * weights).sum(), (coarse, lateral_in)), grads)


def test_add_upsampled_keeps_the_wider_dtype_of_mixed_inputs():
    from fpn.pyramids.fpn import add_upsampled

    coarse = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16, requires_grad=True)
    lateral = torch.randn(1, 2, 6, 8, requires_grad=True)  # float32: the sum is float32, as `lateral + up` is
    got = add_upsampled(lateral * 1, coarse)
    assert got.dtype == torch.float32
    assert torch.equal(got, lateral + nearest_up(coarse, (6, 8)))
