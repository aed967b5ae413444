"""Winograd F(4x4, 3x3): the 3x3 stride-1 convolutions of a detector with 4x fewer multiplications.

Half the FLOPs of an R50-FPN at 800x1216 are the 256->256 3x3 convolutions on P2..P6 (the pyramid's output
convolutions and the RPN head). A direct convolution needs 9 multiply-adds per output and input channel;
Winograd's minimal filtering algorithm (Lavin & Gray, 2016) computes a 4x4 output tile from a 6x6 input
tile with 36: per tile ``Y = A^T [(G w G^T) . (B^T d B)] A``, where the elementwise product, summed over
input channels, becomes 36 independent GEMMs ``[tiles, C] @ [C, K]``. On a CPU whose best convolution
already runs at its peak rate, this is the only way to go faster in float32.

The price is rounding: the transforms mix values with factors up to 8, so a float32 result differs from the
float64 convolution by ~1e-5 of the output's range, against ~2e-6 for the direct convolution
(tests/ops/test_winograd.py measures both). Detections are unchanged (the torchvision parity test runs the
optimized model); ``FasterRCNN.optimize_for_inference(winograd=False)`` keeps the direct convolutions.

Memory layout: the input is padded into an NHWC workspace, the row then column transforms are written
into ``V[36, tiles, C]``; each GEMM is a 1x1 oneDNN convolution on a channels-last view (MKL's batched
GEMM reaches ~60 % of the rate oneDNN does here); the output transform writes straight into the
interleaved NHWC result. Workspaces are kept between calls and shared by all layers of a model: a fresh
400 MB buffer per call costs more in page faults than the transforms themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TILE = 4  # output tile edge: F(4x4, 3x3)
TAPS = TILE + 2  # input tile edge

# Lavin & Gray's interpolation points 0, 1, -1, 2, -2 and infinity. G is applied once per weight, in
# float64; B^T and A^T are applied to every map, factored by hand below (_input_rows, _output_rows).
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G w G^T`` for a ``[K, C, 3, 3]`` weight: ``[36, K, C, 1, 1]``, one 1x1 convolution weight per tap."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs 3x3 weights, got {tuple(weight.shape)}")
    transformed = torch.einsum("ak,ockl,bl->aboc", _G, weight.detach().double().cpu(), _G)
    out_channels, in_channels = weight.shape[:2]
    return transformed.reshape(TAPS * TAPS, out_channels, in_channels, 1, 1).to(weight.device, weight.dtype)


def _input_rows(d: list[torch.Tensor], out: list[torch.Tensor], scratch: torch.Tensor) -> None:
    """``out = B^T d`` along one axis for six tap views ``d``; ``scratch`` holds three maps of out's shape."""
    d0, d1, d2, d3, d4, d5 = d
    a, b, e = scratch
    torch.add(d4, d2, alpha=-5, out=out[0]).add_(d0, alpha=4)  # 4 d0 - 5 d2 + d4
    torch.add(d4, d2, alpha=-4, out=a)
    torch.add(d3, d1, alpha=-4, out=b)
    torch.add(a, b, out=out[1])  # -4 d1 - 4 d2 + d3 + d4
    torch.sub(a, b, out=out[2])  # 4 d1 - 4 d2 - d3 + d4
    torch.sub(d4, d2, out=a)
    torch.sub(d3, d1, out=e)
    torch.add(a, e, alpha=2, out=out[3])  # -2 d1 - d2 + 2 d3 + d4
    torch.add(a, e, alpha=-2, out=out[4])  # 2 d1 - d2 - 2 d3 + d4
    torch.add(d5, d3, alpha=-5, out=out[5]).add_(d1, alpha=4)  # 4 d1 - 5 d3 + d5


def _output_rows(m: list[torch.Tensor], out: list[torch.Tensor], scratch: torch.Tensor) -> None:
    """``out = A^T m`` along one axis for six tap maps ``m``; ``scratch`` holds four maps of out's shape."""
    m0, m1, m2, m3, m4, m5 = m
    p, q, r, s = scratch
    torch.add(m1, m2, out=p)
    torch.sub(m1, m2, out=q)
    torch.add(m3, m4, out=r)
    torch.sub(m3, m4, out=s)
    torch.add(m0, p, out=out[0]).add_(r)  # m0 + m1 + m2 + m3 + m4
    torch.add(q, s, alpha=2, out=out[1])  # m1 - m2 + 2 (m3 - m4)
    torch.add(p, r, alpha=4, out=out[2])  # m1 + m2 + 4 (m3 + m4)
    torch.add(q, s, alpha=8, out=out[3]).add_(m5)  # m1 - m2 + 8 (m3 - m4) + m5


class Workspace:
    """Flat scratch buffers, one per role, grown to the largest request and viewed to each call's shape."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, role: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buffer = self.buffers.get(role)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = like.new_empty(numel)
            self.buffers[role] = buffer
        return buffer[:numel].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


def winograd_conv3x3(
    x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None = None, workspace: Workspace | None = None
) -> torch.Tensor:
    """``conv2d(x, w, bias, stride=1, padding=1)`` for ``transformed = transform_weight(w)``.

    ``x``: ``[N, C, H, W]`` in any memory format, any H and W; returns ``[N, K, H, W]`` channels-last.
    """
    workspace = workspace or Workspace()
    n, channels, height, width = x.shape
    out_channels = transformed.shape[1]
    tiles_h, tiles_w = -(-height // TILE), -(-width // TILE)
    padded_w = tiles_w * TILE + 2

    # Zero padding: one pixel of the convolution's own, plus up to 3 to fill the last tiles.
    xp = workspace.take("input", (n, tiles_h * TILE + 2, padded_w, channels), x)
    xp[:, 0].zero_()
    xp[:, height + 1 :].zero_()
    xp[:, :, 0].zero_()
    xp[:, :, width + 1 :].zero_()
    xp[:, 1 : height + 1, 1 : width + 1].copy_(x.permute(0, 2, 3, 1))

    # B^T d B, separably: rows (tap k of tile i is padded row 4i + k), then columns.
    rows = workspace.take("rows", (TAPS, n, tiles_h, padded_w, channels), x)
    span_h, span_w = TILE * tiles_h, TILE * tiles_w
    _input_rows(
        [xp[:, k : k + span_h : TILE] for k in range(TAPS)],
        list(rows),
        workspace.take("row_scratch", (3, n, tiles_h, padded_w, channels), x),
    )
    v = workspace.take("v", (TAPS, TAPS, n, tiles_h, tiles_w, channels), x)
    scratch = workspace.take("col_scratch", (3, n, tiles_h, tiles_w, channels), x)
    for i in range(TAPS):
        _input_rows([rows[i][:, :, k : k + span_w : TILE] for k in range(TAPS)], list(v[i]), scratch)

    # 36 GEMMs [tiles, C] @ [C, K], each as a 1x1 convolution on a channels-last view.
    n_tiles = n * tiles_h * tiles_w
    # [36][1, C, tiles, 1] with strides (tiles * C, 1, C, C): channels-last, so oneDNN reads it in place.
    v_flat = v.view(TAPS * TAPS, 1, n_tiles, 1, channels).permute(0, 1, 4, 2, 3)
    m = [
        F.conv2d(v_flat[t], transformed[t]).permute(0, 2, 3, 1).view(n, tiles_h, tiles_w, out_channels)
        for t in range(TAPS * TAPS)
    ]

    # A^T m A: rows into a scratch, then columns straight into the interleaved output.
    half = workspace.take("half", (TILE, TAPS, n, tiles_h, tiles_w, out_channels), x)
    scratch = workspace.take("out_scratch", (4, n, tiles_h, tiles_w, out_channels), x)
    for b in range(TAPS):
        _output_rows([m[k * TAPS + b] for k in range(TAPS)], [half[i, b] for i in range(TILE)], scratch)
    y = x.new_empty(n, tiles_h, TILE, tiles_w, TILE, out_channels)
    for i in range(TILE):
        _output_rows(list(half[i]), [y[:, :, i, :, j] for j in range(TILE)], scratch)
    y = y.view(n, span_h, span_w, out_channels)
    if bias is not None:
        y.add_(bias)
    if span_h != height or span_w != width:
        y = y[:, :height, :width]
    return y.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


class WinogradConv2d(nn.Module):
    """An inference-only stand-in for a 3x3 stride-1 ``nn.Conv2d`` (see the module docstring).

    Keeps the original weight for calls that need gradients (it is then the direct convolution) and for
    maps too small for the transforms to pay (fewer than ``min_pixels`` outputs).
    """

    min_pixels = 64

    def __init__(self, conv: nn.Conv2d, workspace: Workspace) -> None:
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError(f"not a 3x3 stride-1 padding-1 dense convolution: {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = conv.weight
        self.bias = conv.bias
        self.register_buffer("transformed", transform_weight(conv.weight), persistent=False)
        self.workspace = workspace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if needs_grad or x.shape[-2] * x.shape[-1] < self.min_pixels or x.dtype != self.transformed.dtype:
            return F.conv2d(x, self.weight, self.bias, padding=1)
        return winograd_conv3x3(x, self.transformed, self.bias, self.workspace)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, F(4x4, 3x3)"


def is_winograd_eligible(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def use_winograd(module: nn.Module, min_channels: int = 128) -> int:
    """Swap every eligible 3x3 convolution with at least ``min_channels`` in and out; returns how many.

    Narrower convolutions stay direct: at 64 channels the GEMMs are too thin to make up for the transforms
    (measured: 0.96x on a 200x304 map), at 128 and above they win (1.3-2.2x).
    """
    workspace = Workspace()
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if is_winograd_eligible(child) and min(child.in_channels, child.out_channels) >= min_channels:
                setattr(parent, name, WinogradConv2d(child, workspace))
                swapped += 1
    return swapped
