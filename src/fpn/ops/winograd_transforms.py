"""The transforms of Winograd F(4x4, 3x3) (see :mod:`fpn.ops.winograd`) and their transposes, by chunks of tiles.

A map is cut into 4x4 output tiles; tile (i, j) reads the 6x6 input window at padded rows 4i..4i+5 and
columns 4j..4j+5, so neighbouring windows share two rows (columns). Every transform is separable and is
applied along rows, then columns, as a few elementwise ops on strided views of NHWC buffers (channels
innermost, so each op streams contiguous runs of C values).

The work goes by chunks of tile rows (:meth:`Tiling.chunks`): a chunk's buffers (~36 x its input) stay
small enough to be reused from one chunk to the next, where whole-map buffers of a P2 map in training
would cost over a gigabyte. Buffers live in a :class:`Workspace` kept between calls (a fresh buffer per
call costs more in page faults than the transforms).
"""

from __future__ import annotations

import torch

TILE = 4  # output tile edge: F(4x4, 3x3)
TAPS = TILE + 2  # input tile edge

# Lavin & Gray's interpolation points 0, 1, -1, 2, -2 and infinity. G is applied once per weight, in
# float64; B^T and A^T are applied to every map, factored by hand below (input_rows, output_rows).
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
    """``G w G^T`` for a ``[K, C, 3, 3]`` weight: ``[36, K, C]``, one GEMM operand per tap of the 6x6 tile."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs 3x3 weights, got {tuple(weight.shape)}")
    g = _G.to(weight.device)
    transformed = torch.einsum("ak,ockl,bl->aboc", g, weight.detach().double(), g)
    out_channels, in_channels = weight.shape[:2]
    return transformed.reshape(TAPS * TAPS, out_channels, in_channels).to(weight.device, weight.dtype)


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


class Tiling:
    """How an ``[N, C, H, W]`` map splits into 4x4 output tiles, and those into chunks of tile rows."""

    def __init__(self, shape: torch.Size) -> None:
        self.n, _, self.height, self.width = shape
        self.tiles_h, self.tiles_w = -(-self.height // TILE), -(-self.width // TILE)
        self.span_h, self.span_w = TILE * self.tiles_h, TILE * self.tiles_w
        self.padded_w = self.span_w + 2

    def chunks(self, tiles_per_chunk: int) -> list[tuple[int, int]]:
        """``[(first, end)]`` tile rows, each chunk about ``tiles_per_chunk`` tiles over the batch."""
        rows = max(1, tiles_per_chunk // (self.n * self.tiles_w))
        return [(first, min(first + rows, self.tiles_h)) for first in range(0, self.tiles_h, rows)]

    def tile_shape(self, rows: int, channels: int) -> tuple[int, int, int, int]:
        return (self.n, rows, self.tiles_w, channels)


def input_rows(d: list[torch.Tensor], out: list[torch.Tensor], scratch: torch.Tensor) -> None:
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


def output_rows(m: list[torch.Tensor], out: list[torch.Tensor], scratch: torch.Tensor) -> None:
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


def input_rows_adjoint(g: list[torch.Tensor], out: list[torch.Tensor], scratch: torch.Tensor) -> None:
    """``out = B g`` (the transpose of ``input_rows``) along one axis; ``scratch``: three maps."""
    g0, g1, g2, g3, g4, g5 = g
    u, v, w = scratch
    torch.add(g1, g2, out=u)
    torch.sub(g2, g1, out=v)
    torch.add(g3, g4, out=w)
    torch.mul(g0, 4, out=out[0])
    torch.add(g0, u, out=out[4]).add_(w)  # g0 + g1 + g2 + g3 + g4
    torch.mul(g0, -5, out=out[2]).sub_(w).add_(u, alpha=-4)  # -5 g0 - 4 g1 - 4 g2 - g3 - g4
    torch.sub(g4, g3, out=w)  # z
    torch.add(v, g5, out=out[1]).mul_(4).add_(w, alpha=2)  # -4 g1 + 4 g2 - 2 g3 + 2 g4 + 4 g5
    torch.add(v, w, alpha=2, out=out[3]).add_(g5, alpha=5).neg_()  # g1 - g2 + 2 g3 - 2 g4 - 5 g5
    out[5].copy_(g5)


def output_rows_adjoint(g: list[torch.Tensor], out: list[torch.Tensor], scratch: torch.Tensor) -> None:
    """``out = A g`` (the transpose of ``output_rows``) along one axis; ``scratch``: two maps."""
    g0, g1, g2, g3 = g
    even, odd = scratch
    out[0].copy_(g0)
    out[5].copy_(g3)
    torch.add(g0, g2, out=even)
    torch.add(g1, g3, out=odd)
    torch.add(even, odd, out=out[1])
    torch.sub(even, odd, out=out[2])
    torch.add(g0, g2, alpha=4, out=even)
    torch.add(g1, g3, alpha=4, out=odd)
    torch.add(even, odd, alpha=2, out=out[3])  # g0 + 2 g1 + 4 g2 + 8 g3
    torch.add(even, odd, alpha=-2, out=out[4])  # g0 - 2 g1 + 4 g2 - 8 g3


def weight_adjoint(grad_transformed: torch.Tensor) -> torch.Tensor:
    """``G^T dU G``: the gradient of a 3x3 weight from that of ``transform_weight``'s result."""
    g = _G.to(grad_transformed.device, torch.float64)
    out_channels, in_channels = grad_transformed.shape[1:]
    grad = grad_transformed.double().view(TAPS, TAPS, out_channels, in_channels)
    return torch.einsum("ak,aboc,bl->ockl", g, grad, g).to(grad_transformed.dtype)


def scatter_taps(taps: list[torch.Tensor], out: torch.Tensor, axis: int, span: int) -> None:
    """``out[..., 4i + k, ...] = sum of taps[k][..., i, ...]`` along ``axis`` (length ``span + 2``)."""

    def every_tile(start: int) -> torch.Tensor:
        index = [slice(None)] * out.dim()
        index[axis] = slice(start, start + span, TILE)
        return out[tuple(index)]

    for k in range(TILE):  # taps 0..3 of all tiles cover positions 0..span-1 exactly once
        every_tile(k).copy_(taps[k])
    out.narrow(axis, span, 2).zero_()
    for k in (TILE, TILE + 1):  # taps 4 and 5 overlap the next tile's 0 and 1 (or the padding)
        every_tile(k).add_(taps[k])


def input_transform(x: torch.Tensor, tiling: Tiling, first: int, end: int, workspace: Workspace) -> torch.Tensor:
    """``B^T d B`` of the input windows of tile rows ``first..end-1``: ``[36, tiles, C]`` (a workspace view)."""
    rows, channels = end - first, x.shape[1]
    n, height, width = tiling.n, tiling.height, tiling.width
    # The chunk's padded rows: the convolution's zero padding of 1, plus up to 3 to fill the last tiles.
    xp = workspace.take("input", (n, TILE * rows + 2, tiling.padded_w, channels), x)
    top = TILE * first - 1  # the input row of xp's row 0
    low, high = max(top, 0), min(top + TILE * rows + 2, height)
    xp[:, : low - top].zero_()
    xp[:, high - top :].zero_()
    body = xp[:, low - top : high - top]
    body[:, :, 0].zero_()
    body[:, :, width + 1 :].zero_()
    body[:, :, 1 : width + 1].copy_(x[:, :, low:high].permute(0, 2, 3, 1))

    row_taps = workspace.take("rows", (TAPS, n, rows, tiling.padded_w, channels), x)
    scratch = workspace.take("row_scratch", (3, n, rows, tiling.padded_w, channels), x)
    input_rows([xp[:, k : k + TILE * rows : TILE] for k in range(TAPS)], list(row_taps), scratch)
    v = workspace.take("v", (TAPS, TAPS, *tiling.tile_shape(rows, channels)), x)
    scratch = workspace.take("col_scratch", (3, *tiling.tile_shape(rows, channels)), x)
    for i in range(TAPS):
        input_rows([row_taps[i][:, :, k : k + tiling.span_w : TILE] for k in range(TAPS)], list(v[i]), scratch)
    return v.view(TAPS * TAPS, n * rows * tiling.tiles_w, channels)


def add_input_transform_adjoint(
    grad_v: list[torch.Tensor], grad_xp: torch.Tensor, tiling: Tiling, first: int, end: int, workspace: Workspace
) -> None:
    """The transpose of :func:`input_transform`: adds the chunk's share to the padded input gradient.

    ``grad_v``: 36 ``[N, rows, tiles_w, C]``; ``grad_xp``: ``[N, span_h + 2, span_w + 2, C]``, zeroed before
    the first chunk. Neighbouring windows overlap, so taps 4 and 5 of a tile add onto taps 0 and 1 of the next.
    """
    rows, channels = end - first, grad_v[0].shape[-1]
    like = grad_v[0]
    grad_rows = workspace.take("rows", (TAPS, tiling.n, rows, tiling.padded_w, channels), like)
    taps = workspace.take("taps", (TAPS, *tiling.tile_shape(rows, channels)), like)
    scratch = workspace.take("col_scratch", (3, *tiling.tile_shape(rows, channels)), like)
    for i in range(TAPS):
        input_rows_adjoint(grad_v[i * TAPS : (i + 1) * TAPS], list(taps), scratch)
        scatter_taps(list(taps), grad_rows[i], axis=2, span=tiling.span_w)
    row_taps = workspace.take("row_taps", (TAPS, tiling.n, rows, tiling.padded_w, channels), like)
    scratch = workspace.take("row_scratch", (3, tiling.n, rows, tiling.padded_w, channels), like)
    input_rows_adjoint(list(grad_rows), list(row_taps), scratch)
    block = grad_xp[:, TILE * first : TILE * end + 2]
    for k in range(TAPS):
        block[:, k : k + TILE * rows : TILE].add_(row_taps[k])


def output_transform(m: list[torch.Tensor], out: torch.Tensor, workspace: Workspace) -> None:
    """``A^T m A`` for 36 maps ``[N, rows, tiles_w, K]`` into ``out``, a ``[N, rows, 4, tiles_w, 4, K]`` view."""
    like = m[0]
    half = workspace.take("half", (TILE, TAPS, *like.shape), like)
    scratch = workspace.take("out_scratch", (4, *like.shape), like)
    for b in range(TAPS):  # rows into a scratch, then columns straight into the interleaved output
        output_rows([m[k * TAPS + b] for k in range(TAPS)], [half[i, b] for i in range(TILE)], scratch)
    for i in range(TILE):
        output_rows(list(half[i]), [out[:, :, i, :, j] for j in range(TILE)], scratch)


def output_transform_adjoint(
    grad_y: torch.Tensor, tiling: Tiling, first: int, end: int, workspace: Workspace
) -> torch.Tensor:
    """The transpose of :func:`output_transform` for tile rows ``first..end-1`` of ``grad_y`` ``[N, K, H, W]``.

    Returns ``[36, tiles, K]`` (a workspace view); pixels of the last tiles beyond the map count as zero.
    """
    rows, channels = end - first, grad_y.shape[1]
    padded = workspace.take("grad_output", (tiling.n, TILE * rows, tiling.span_w, channels), grad_y)
    top, bottom = TILE * first, min(TILE * end, tiling.height)
    padded[:, bottom - top :].zero_()
    padded[:, :, tiling.width :].zero_()
    padded[:, : bottom - top, : tiling.width].copy_(grad_y[:, :, top:bottom].permute(0, 2, 3, 1))
    tiles = padded.view(tiling.n, rows, TILE, tiling.tiles_w, TILE, channels)
    shape = tiling.tile_shape(rows, channels)
    half = workspace.take("half", (TAPS, TILE, *shape), grad_y)
    scratch = workspace.take("out_scratch", (2, *shape), grad_y)
    for j in range(TILE):
        output_rows_adjoint([tiles[:, :, i, :, j] for i in range(TILE)], list(half[:, j]), scratch)
    grad_m = workspace.take("grad_m", (TAPS, TAPS, *shape), grad_y)
    for a in range(TAPS):
        output_rows_adjoint(list(half[a]), list(grad_m[a]), scratch)
    return grad_m.view(TAPS * TAPS, tiling.n * rows * tiling.tiles_w, channels)
