"""The transforms of Winograd F(4x4, 3x3) (see :mod:`fpn.ops.winograd`) and their transposes, by chunks of tiles.

A map is cut into 4x4 output tiles; tile (i, j) reads the 6x6 input window at padded rows 4i..4i+5 and
columns 4j..4j+5, so neighbouring windows share two rows (columns). Each transform is one small matrix
product over every tile and channel at once:

- input:  ``V = (B^T kron B^T) D`` with ``D [36, tiles x C]`` the windows, gathered by one strided copy;
- output: ``Y = (A^T kron A^T) M`` with ``M [36, tiles x K]``, then one copy interleaves the 4x4 tiles.

Why Kronecker products rather than the separable row-then-column form (~12 additions a value instead of
72 multiply-adds): the separable form is a dozen elementwise passes over strided views, and on the CPU it
is memory traffic, not arithmetic, that costs. Measured on a 256-channel 200x304 map (2 threads): the
elementwise transforms took ~130 ms around a 60 ms GEMM; as matrix products, ~30 ms.

The work goes by chunks of tile rows (:meth:`Tiling.chunks`): a chunk's buffers (~36 x its input) stay
in cache and are reused from one chunk to the next, where whole-map buffers of a P2 map in training
would cost over a gigabyte. Buffers live in a :class:`Workspace` kept between calls (a fresh buffer per
call costs more in page faults than the transforms).
"""

from __future__ import annotations

import torch

TILE = 4  # output tile edge: F(4x4, 3x3)
TAPS = TILE + 2  # input tile edge

# Lavin & Gray's interpolation points 0, 1, -1, 2, -2 and infinity.
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
_BT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
_AT = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=torch.float64,
)
# Tap t = 6a + b of a tile is row a, column b of its 6x6 window; output o = 4i + j is row i, column j.
_INPUT = torch.kron(_BT, _BT)  # [36, 36]: V[6a + b] = sum over (i, j) of BT[a, i] BT[b, j] d[6i + j]
_OUTPUT = torch.kron(_AT, _AT)  # [16, 36]
_WEIGHT = torch.kron(_G, _G)  # [36, 9]: U[6a + b] = sum over (k, l) of G[a, k] G[b, l] w[3k + l]
_matrices: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}


def _matrix(name: str, like: torch.Tensor) -> torch.Tensor:
    """One of the transform matrices in ``like``'s dtype and device, converted once."""
    key = (name, like.dtype, like.device)
    if key not in _matrices:
        sources = {"input": _INPUT, "output": _OUTPUT, "weight": _WEIGHT, "input_t": _INPUT.T, "output_t": _OUTPUT.T}
        source = sources[name]
        _matrices[key] = source.to(like.device, like.dtype).contiguous()
    return _matrices[key]


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G w G^T`` for a ``[K, C, 3, 3]`` weight: ``[36, K, C]``, one GEMM operand per tap.

    One matrix product ``(G kron G) [36, 9]`` by the weights as ``[9, K x C]``: in training it runs at every
    step, and a 512-channel layer's weights are 2.4 M values.
    """
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs 3x3 weights, got {tuple(weight.shape)}")
    out_channels, in_channels = weight.shape[:2]
    flat = weight.detach().reshape(out_channels * in_channels, 9)
    return (_matrix("weight", flat) @ flat.T).view(TAPS * TAPS, out_channels, in_channels)


def weight_adjoint(grad_transformed: torch.Tensor) -> torch.Tensor:
    """``G^T dU G``: the gradient of a 3x3 weight from that of ``transform_weight``'s result ``[36, K, C]``."""
    out_channels, in_channels = grad_transformed.shape[1:]
    grad = grad_transformed.reshape(TAPS * TAPS, out_channels * in_channels)
    return (grad.T @ _matrix("weight", grad)).view(out_channels, in_channels, 3, 3)


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

    def chunks(self, tiles_per_chunk: int) -> list[tuple[int, int]]:
        """``[(first, end)]`` tile rows, each chunk about ``tiles_per_chunk`` tiles over the batch."""
        rows = max(1, tiles_per_chunk // (self.n * self.tiles_w))
        return [(first, min(first + rows, self.tiles_h)) for first in range(0, self.tiles_h, rows)]

    def tiles(self, first: int, end: int) -> int:
        return self.n * (end - first) * self.tiles_w

    def padded(self, x: torch.Tensor, workspace: Workspace, role: str) -> torch.Tensor:
        """``x`` ``[N, C, H, W]`` as NHWC with the convolution's zero border of 1, and zeros up to whole tiles."""
        xp = workspace.take(role, (self.n, self.span_h + 2, self.span_w + 2, x.shape[1]), x)
        xp[:, 0].zero_()
        xp[:, self.height + 1 :].zero_()
        xp[:, :, 0].zero_()
        xp[:, :, self.width + 1 :].zero_()
        xp[:, 1 : self.height + 1, 1 : self.width + 1].copy_(x.permute(0, 2, 3, 1))
        return xp

    def windows(self, xp: torch.Tensor, first: int, end: int) -> torch.Tensor:
        """The 6x6 windows of tile rows ``first..end-1``: a ``[6, 6, N, rows, tiles_w, C]`` view of ``xp``."""
        s_n, s_h, s_w, s_c = xp.stride()
        return xp.as_strided(
            (TAPS, TAPS, self.n, end - first, self.tiles_w, xp.shape[3]),
            (s_h, s_w, s_n, TILE * s_h, TILE * s_w, s_c),
            xp.storage_offset() + TILE * first * s_h,
        )


def input_transform(
    xp: torch.Tensor, tiling: Tiling, first: int, end: int, workspace: Workspace, role: str = "v"
) -> torch.Tensor:
    """``B^T d B`` of the windows of tile rows ``first..end-1`` of the padded ``xp``: ``[36, tiles, C]``."""
    channels = xp.shape[3]
    windows = workspace.take("windows", (TAPS * TAPS, tiling.tiles(first, end) * channels), xp)
    windows.view(TAPS, TAPS, tiling.n, end - first, tiling.tiles_w, channels).copy_(tiling.windows(xp, first, end))
    v = workspace.take(role, windows.shape, xp)
    torch.mm(_matrix("input", xp), windows, out=v)
    return v.view(TAPS * TAPS, -1, channels)


def add_input_transform_adjoint(
    grad_v: torch.Tensor, grad_xp: torch.Tensor, tiling: Tiling, first: int, end: int, workspace: Workspace
) -> None:
    """The transpose of :func:`input_transform`: adds the chunk's share into the padded input gradient.

    ``grad_v``: ``[36, tiles, C]``; ``grad_xp``: ``[N, span_h + 2, span_w + 2, C]``, zeroed before the first
    chunk. Neighbouring windows overlap, so each tap is added on its own (one view never overlaps itself).
    """
    channels = grad_v.shape[2]
    grad_windows = workspace.take("windows", (TAPS * TAPS, grad_v.shape[1] * channels), grad_v)
    torch.mm(_matrix("input_t", grad_v), grad_v.view(TAPS * TAPS, -1), out=grad_windows)
    taps = grad_windows.view(TAPS, TAPS, tiling.n, end - first, tiling.tiles_w, channels)
    windows = tiling.windows(grad_xp, first, end)
    for a in range(TAPS):
        for b in range(TAPS):
            windows[a, b].add_(taps[a, b])


def output_transform(
    m: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None, tiling: Tiling, workspace: Workspace
) -> None:
    """``A^T m A (+ bias)`` of ``m`` ``[36, tiles, K]`` into ``out``, a ``[N, rows, 4, tiles_w, 4, K]`` view."""
    n, rows, _, tiles_w, _, channels = out.shape
    y = workspace.take("y_tiles", (TILE * TILE, m.shape[1] * channels), m)
    torch.mm(_matrix("output", m), m.view(TAPS * TAPS, -1), out=y)
    tiles = y.view(TILE, TILE, n, rows, tiles_w, channels).permute(2, 3, 0, 4, 1, 5)
    if bias is None:
        out.copy_(tiles)
    else:
        torch.add(tiles, bias, out=out)


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
    grad_tiles = workspace.take("y_tiles", (TILE * TILE, tiling.tiles(first, end) * channels), grad_y)
    grad_tiles.view(TILE, TILE, tiling.n, rows, tiling.tiles_w, channels).copy_(
        padded.view(tiling.n, rows, TILE, tiling.tiles_w, TILE, channels).permute(2, 4, 0, 1, 3, 5)
    )
    grad_m = workspace.take("grad_m", (TAPS * TAPS, grad_tiles.shape[1]), grad_y)
    torch.mm(_matrix("output_t", grad_y), grad_tiles, out=grad_m)
    return grad_m.view(TAPS * TAPS, -1, channels)
