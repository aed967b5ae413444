"""The transforms of Winograd F(4x4, 3x3) (see :mod:`fpn.layers.winograd`) and their transposes, by chunks of tiles.

A map is cut into 4x4 output tiles; tile (i, j) reads the 6x6 input window at padded rows 4i..4i+5 and
columns 4j..4j+5, so neighbouring windows share two rows (columns). Each transform is one small matrix
product over every tile and channel at once:

- input:  ``V = (B^T kron B^T) D`` with ``D [36, tiles x C]`` the windows, gathered by one strided copy;
- output: ``Y = (A^T kron A^T) M`` with ``M [36, tiles x K]``, then one copy interleaves the 4x4 tiles.

Why Kronecker products rather than the separable row-then-column form (~12 additions a value instead of
72 multiply-adds): the separable form is a dozen elementwise passes over strided views, and on the CPU it
is memory traffic, not arithmetic, that costs: the elementwise transforms took longer than the GEMMs they
surround, the matrix products a fraction of that (measured on the 2-core machine of benchmarks/).

The work goes by chunks of tile rows (:meth:`Tiling.chunks`), each padding and transforming only its band
of rows: a chunk's buffers (~36 x its share of the input) are reused from one chunk to the next, where
whole-map buffers of a P2 map in training would cost over a gigabyte, and training needs no more memory
than the direct convolution's. Buffers live in a :class:`Workspace` kept between calls (a fresh buffer per
call costs more in page faults than the transforms); four roles serve every step, forward and backward, each
buffer reused once what it held is spent: ``band`` (a band of input or output rows), ``windows`` (gathered
windows, output tiles), ``v`` (transformed input, its gradient) and ``m`` (the GEMMs' result, its gradient).
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
            # A normal tensor even when the first call runs under inference_mode: an inference tensor could not
            # be written in place by a later call outside it (a model optimized in one mode, run in the other).
            with torch.inference_mode(False):
                buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
            self.buffers[role] = buffer
        return buffer[:numel].view(shape)


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

    def band(self, first: int, end: int) -> tuple[int, int, int]:
        """Tile rows ``first..end-1`` read padded rows ``4 first .. 4 end + 1``: ``(top, low, high)`` where
        ``top`` is the map row of the band's row 0 (-1 is the zero border) and ``low..high-1`` the map rows
        inside both the band and the map."""
        top = TILE * first - 1
        return top, max(top, 0), min(top + TILE * (end - first) + 2, self.height)

    def windows(self, band: torch.Tensor) -> torch.Tensor:
        """The 6x6 windows of a band's tiles: a ``[6, 6, N, rows, tiles_w, C]`` view of the NHWC ``band``."""
        s_n, s_h, s_w, s_c = band.stride()
        rows = (band.shape[1] - 2) // TILE
        return band.as_strided(
            (TAPS, TAPS, self.n, rows, self.tiles_w, band.shape[3]),
            (s_h, s_w, s_n, TILE * s_h, TILE * s_w, s_c),
            band.storage_offset(),
        )


def input_transform(
    x: torch.Tensor, tiling: Tiling, first: int, end: int, workspace: Workspace, role: str = "v"
) -> torch.Tensor:
    """``B^T d B`` of the windows of tile rows ``first..end-1`` of ``x`` ``[N, C, H, W]``: ``[36, tiles, C]``.

    Only the chunk's band of rows is padded (the convolution's zero border, and zeros up to whole tiles), so
    the memory it takes is the chunk's, not the map's.
    """
    rows, channels = end - first, x.shape[1]
    band = workspace.take("band", (tiling.n, TILE * rows + 2, tiling.span_w + 2, channels), x)
    top, low, high = tiling.band(first, end)
    band[:, : low - top].zero_()
    band[:, high - top :].zero_()
    inside = band[:, low - top : high - top]
    inside[:, :, 0].zero_()
    inside[:, :, tiling.width + 1 :].zero_()
    inside[:, :, 1 : tiling.width + 1].copy_(x[:, :, low:high].permute(0, 2, 3, 1))
    windows = workspace.take("windows", (TAPS * TAPS, tiling.tiles(first, end) * channels), x)
    windows.view(TAPS, TAPS, tiling.n, rows, tiling.tiles_w, channels).copy_(tiling.windows(band))
    v = workspace.take(role, windows.shape, x)
    torch.mm(_matrix("input", x), windows, out=v)
    return v.view(TAPS * TAPS, -1, channels)


def add_input_transform_adjoint(
    grad_v: torch.Tensor, grad_x: torch.Tensor, tiling: Tiling, first: int, end: int, workspace: Workspace
) -> None:
    """The transpose of :func:`input_transform`: adds the chunk's share into the input gradient.

    ``grad_v``: ``[36, tiles, C]``; ``grad_x``: ``[N, H, W, C]``, zeroed before the first chunk. Neighbouring
    windows overlap, so each tap is added on its own into the band (one view never overlaps itself), and
    consecutive bands share two rows.
    """
    rows, channels = end - first, grad_v.shape[2]
    grad_windows = workspace.take("windows", (TAPS * TAPS, grad_v.shape[1] * channels), grad_v)
    torch.mm(_matrix("input_t", grad_v), grad_v.view(TAPS * TAPS, -1), out=grad_windows)
    taps = grad_windows.view(TAPS, TAPS, tiling.n, rows, tiling.tiles_w, channels)
    band = workspace.take("band", (tiling.n, TILE * rows + 2, tiling.span_w + 2, channels), grad_v).zero_()
    windows = tiling.windows(band)
    for a in range(TAPS):
        for b in range(TAPS):
            windows[a, b].add_(taps[a, b])
    top, low, high = tiling.band(first, end)
    grad_x[:, low:high].add_(band[:, low - top : high - top, 1 : tiling.width + 1])


def output_transform(
    m: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None, tiling: Tiling, workspace: Workspace
) -> None:
    """``A^T m A (+ bias)`` of ``m`` ``[36, tiles, K]`` into ``out``, a ``[N, rows, 4, tiles_w, 4, K]`` view."""
    n, rows, _, tiles_w, _, channels = out.shape
    y = workspace.take("windows", (TILE * TILE, m.shape[1] * channels), m)  # the windows are spent by now
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
    padded = workspace.take("band", (tiling.n, TILE * rows, tiling.span_w, channels), grad_y)
    top, bottom = TILE * first, min(TILE * end, tiling.height)
    padded[:, bottom - top :].zero_()
    padded[:, :, tiling.width :].zero_()
    padded[:, : bottom - top, : tiling.width].copy_(grad_y[:, :, top:bottom].permute(0, 2, 3, 1))
    grad_tiles = workspace.take("windows", (TILE * TILE, tiling.tiles(first, end) * channels), grad_y)
    grad_tiles.view(TILE, TILE, tiling.n, rows, tiling.tiles_w, channels).copy_(
        padded.view(tiling.n, rows, TILE, tiling.tiles_w, TILE, channels).permute(2, 4, 0, 1, 3, 5)
    )
    grad_m = workspace.take("m", (TAPS * TAPS, grad_tiles.shape[1]), grad_y)  # read until the chunk's end
    torch.mm(_matrix("output_t", grad_y), grad_tiles, out=grad_m)
    return grad_m.view(TAPS * TAPS, -1, channels)
