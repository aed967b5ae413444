"""Winograd F(4x4, 3x3): the 3x3 stride-1 convolutions of a detector with 4x fewer multiplications.

Half the FLOPs of an R50-FPN at 800x1216 are the 256->256 3x3 convolutions on P2..P6 (the pyramid's output
convolutions and the RPN head). A direct convolution needs 9 multiply-adds per output and input channel;
Winograd's minimal filtering algorithm (Lavin & Gray, 2016) computes a 4x4 output tile from a 6x6 input
tile with 36: per tile ``Y = A^T [(G w G^T) . (B^T d B)] A``, where the elementwise product, summed over
input channels, becomes 36 independent GEMMs ``[tiles, C] @ [C, K]``. On a CPU whose best convolution
already runs at its peak rate, this is the only way to go faster in float32.

The price is rounding: the transforms mix values with factors up to 8, so a float32 result differs from the
float64 convolution by ~1e-5 of the output's range, against ~2e-6 for the direct convolution
(tests/layers/test_winograd.py measures both). Detections are unchanged (the torchvision parity test runs the
optimized model); ``FasterRCNN.optimize_for_inference(winograd=False)`` keeps the direct convolutions.

Memory layout: per chunk of tile rows, the chunk's band of the input is padded into an NHWC workspace,
its windows gathered and transformed by one small matrix product into ``V[36, tiles, C]``, the 36 GEMMs run as one
batched GEMM (MKL), and one more small product plus one copy write the interleaved NHWC result
(:mod:`fpn.layers.winograd_transforms`). Workspaces are kept between calls and shared by all layers of a
model: a fresh 400 MB buffer per call costs more in page faults than the transforms themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fpn.layers.winograd_transforms import (
    TAPS,
    TILE,
    Tiling,
    Workspace,
    add_input_transform_adjoint,
    input_transform,
    output_transform,
    output_transform_adjoint,
    transform_weight,
    weight_adjoint,
)

__all__ = [
    "WinogradConv2d",
    "Workspace",
    "direct_convolutions",
    "transform_weight",
    "use_winograd",
    "winograd_conv3x3",
]

# A chunk holds about CHUNK_VALUES tile-channels: each workspace buffer is then at most 36 x 2^15 floats (4.7 MB),
# i.e. 128 tiles at 256 channels, 256 at 128. Small enough for a small model's memory, large enough for the GEMMs.
CHUNK_VALUES = 2**15
TILES_PER_CHUNK: int | None = None  # a fixed number instead (the tests use it to force many chunks)


def tiles_per_chunk(channels: int) -> int:
    return TILES_PER_CHUNK or max(16, CHUNK_VALUES // channels)


def tile_gemms(v: torch.Tensor, weights: torch.Tensor, workspace: Workspace, role: str) -> torch.Tensor:
    """``v[t] @ weights[t]`` for the 36 taps as one batched GEMM into the workspace: ``[36, tiles, K]``.

    ``v``: ``[36, tiles, C]``; ``weights``: ``[36, C, K]`` (any strides MKL takes, e.g. a transposed view).
    """
    out = workspace.take(role, (TAPS * TAPS, v.shape[1], weights.shape[2]), v)
    return torch.bmm(v, weights, out=out)


def winograd_conv3x3(
    x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None = None, workspace: Workspace | None = None
) -> torch.Tensor:
    """``conv2d(x, w, bias, stride=1, padding=1)`` for ``transformed = transform_weight(w)``, no autograd.

    ``x``: ``[N, C, H, W]``, any H and W; returns ``[N, K, H, W]`` in x's memory format.
    """
    workspace = workspace or Workspace()
    tiling = Tiling(x.shape)
    out_channels = transformed.shape[1]
    # A fresh NHWC result that the tiles are written into through a view (what is returned is never a view:
    # autograd forbids in-place ops, such as the ReLU that follows, on views made inside a Function).
    shape = (tiling.n, out_channels, tiling.span_h, tiling.span_w)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    tiles = y.permute(0, 2, 3, 1).view(tiling.n, tiling.tiles_h, TILE, tiling.tiles_w, TILE, out_channels)
    for first, end in tiling.chunks(tiles_per_chunk(max(x.shape[1], out_channels))):
        v = input_transform(x, tiling, first, end, workspace)
        m = tile_gemms(v, transformed.transpose(1, 2), workspace, "m")
        output_transform(m, tiles[:, first:end], bias, tiling, workspace)
    if tiling.span_h != tiling.height or tiling.span_w != tiling.width:
        y = y[:, :, : tiling.height, : tiling.width]
    return y.contiguous(memory_format=_layout_of(x))


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    """Results keep their input's layout: an NCHW map after a GroupNorm stays NCHW (its fast kernel)."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _WinogradConvFunction(torch.autograd.Function):
    """Forward and backward both in the Winograd domain, saving only the input (as a convolution does).

    With ``dM = A dY A^T`` per tile (the output transform's transpose), the gradients are the same 36 GEMMs
    transposed: ``dV = dM U`` (then the input transform's transpose) and ``dU = dM^T V`` (then ``G^T dU G``),
    so the backward pass saves the same 4x in multiplications as the forward one.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, workspace):
        transformed = transform_weight(weight)  # recomputed in backward rather than kept: 4x the weight
        ctx.save_for_backward(x, weight)
        ctx.workspace = workspace
        ctx.has_bias = bias is not None
        return winograd_conv3x3(x, transformed, bias, workspace)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        transformed = transform_weight(weight)
        workspace = ctx.workspace
        tiling = Tiling(x.shape)
        want_x, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad_weight = grad_bias = None
        if want_weight:
            grad_transformed = transformed.new_zeros(transformed.shape)  # [36, K, C]
        if want_x:
            grad_x = x.new_zeros(tiling.n, tiling.height, tiling.width, x.shape[1])  # NHWC
        for first, end in tiling.chunks(tiles_per_chunk(max(transformed.shape[1:]))):
            grad_m = output_transform_adjoint(grad_y, tiling, first, end, workspace)
            if want_weight:
                grad_transformed.baddbmm_(grad_m.transpose(1, 2), input_transform(x, tiling, first, end, workspace))
            if want_x:
                grad_v = tile_gemms(grad_m, transformed, workspace, "v")  # V is spent
                add_input_transform_adjoint(grad_v, grad_x, tiling, first, end, workspace)
        if want_weight:
            grad_weight = weight_adjoint(grad_transformed)
        if want_x:
            grad_x = grad_x.permute(0, 3, 1, 2)  # channels-last [N, C, H, W]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


class WinogradConv2d(nn.Conv2d):
    """A 3x3 stride-1 ``nn.Conv2d`` computed with Winograd F(4x4, 3x3), forward and backward.

    Same parameters, names and state dict as the convolution it replaces (:func:`use_winograd`), so
    checkpoints, optimizers and DDP see no difference. Non-float32 inputs or autocast (bfloat16 cannot carry
    the transforms: ~0.2 of the range off), other devices than the CPU, and maps of too few tiles take the
    direct path. Not thread-safe: two threads running one model would share its workspace.
    """

    # Below these many 4x4 tiles (over the batch), the transformed weights (4x the weights, recomputed at every
    # training step and in backward) and the Python around the GEMMs cost more than the 4x fewer multiplications
    # save. A training step pays them forward and backward, so it needs far more tiles than inference to win
    # (measured on the 2-core machine of benchmarks/).
    min_tiles_inference = 32
    min_tiles_training = 256

    def __init__(self, conv: nn.Conv2d, workspace: Workspace) -> None:
        if not is_winograd_eligible(conv):
            raise ValueError(f"not a 3x3 stride-1 padding-1 dense convolution: {conv}")
        nn.Module.__init__(self)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation"):
            setattr(self, name, getattr(conv, name))
        for name in ("transposed", "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, name, getattr(conv, name))
        self.weight = conv.weight
        self.bias = conv.bias
        self.workspace = workspace
        self.direct = False  # see direct_convolutions
        self._cache: tuple[tuple[int, int, torch.dtype], torch.Tensor] | None = None

    def transformed_weight(self) -> torch.Tensor:
        """``transform_weight(self.weight)``, recomputed only when the weight has changed.

        A change is seen through the tensor's storage and version counter. Tensors made under
        ``torch.inference_mode()`` (a model loaded or optimized there, as ``fpn detect`` does) have no version
        counter, and ``load_state_dict`` inside that mode changes them in place unseen: they are transformed at
        every call, which costs a small fraction of the convolution itself.
        """
        weight = self.weight
        if weight.is_inference():
            return transform_weight(weight)
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, transform_weight(weight))
        return self._cache[1]

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``conv2d(x, weight, bias, padding=1)``: ``nn.Conv2d.forward``'s hook, also called by ``conv_norm``
        with weights that have a frozen BatchNorm folded in (training)."""
        training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        tiles = x.shape[0] * -(-x.shape[-2] // TILE) * -(-x.shape[-1] // TILE)
        if (
            self.direct
            or x.device.type != "cpu"  # cuDNN picks its own algorithms (Winograd among them)
            or tiles < (self.min_tiles_training if training else self.min_tiles_inference)
            or x.dtype != torch.float32
            or weight.dtype != x.dtype
            or torch.is_autocast_enabled(x.device.type)  # its GEMMs would run in bfloat16 / float16
        ):
            return F.conv2d(x, weight, bias, padding=1)
        if training:
            return _WinogradConvFunction.apply(x, weight, bias, self.workspace)
        transformed = self.transformed_weight() if weight is self.weight else transform_weight(weight)
        return winograd_conv3x3(x, transformed, bias, self.workspace)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", winograd=F(4x4, 3x3)"


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

    Narrower convolutions stay direct: at 64 channels the GEMMs are too thin to pay for the transforms; from
    128 channels on Winograd wins, more the wider the convolution (measured on two CPUs).
    The swapped modules share the parameters of the originals and one workspace (they run one after another).
    """
    workspace = Workspace()
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            # A swapped module is no longer eligible (its type is not plain Conv2d): swapping twice is a no-op.
            if is_winograd_eligible(child) and min(child.in_channels, child.out_channels) >= min_channels:
                setattr(parent, name, WinogradConv2d(child, workspace))
                swapped += 1
    return swapped


@contextlib.contextmanager
def direct_convolutions(module: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`WinogradConv2d` of ``module`` runs the direct convolution.

    For counting what the convolutions are worth: ``FlopCounterMode`` counts the Winograd path's GEMMs, a
    quarter of the multiplications, which is the point of it but not the work the model defines.
    """
    swapped = [m for m in module.modules() if isinstance(m, WinogradConv2d)]
    for m in swapped:
        m.direct = True
    try:
        yield
    finally:
        for m in swapped:
            m.direct = False
