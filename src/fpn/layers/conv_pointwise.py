"""``relu(conv(x) [+ residual])`` as one oneDNN convolution with post-ops, for CPU inference.

A ReLU or a residual add after a convolution is a separate pass over the whole feature map: read, write,
and in the bottom-up pathway there are 49 ReLUs and 16 adds per image in a ResNet-50. oneDNN can apply
both while the convolution's output is still in cache (``post-ops``). A bottleneck block gains most in
bfloat16; whole-model inference gains a few percent in bfloat16 and less in float32, where the convolutions
dominate. Writing the result into the shortcut's memory (``overwrite_residual``) gains a little more in both
(measured on the 2-core machine of benchmarks/, fused and separate alternating in one process).

The results are those of the separate operations to rounding: in float32 the same sums (oneDNN may order
them differently in the fused kernel: equal bits on most maps, ~1e-7 relative on some small ones); in
bfloat16 the sum is rounded once instead of twice, closer to the float32 answer.

Only where nothing needs a gradient (oneDNN's fused kernels have no backward), on the CPU, for float32
and bfloat16 dense (ungrouped) convolutions with zero padding on channels-last maps (the layout of
optimized models; bfloat16 residual fusion fails on NCHW and on grouped convolutions in torch 2.13).
Everything else (training, CUDA, Winograd modules, other padding modes) takes the separate operations, so
callers need not care.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import conv_flop_count, flop_registry, register_flop_formula

_FUSABLE_DTYPES = (torch.float32, torch.bfloat16)


def fusable(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv`` applied to ``x`` can run as a fused oneDNN kernel (see the module docstring)."""
    return (
        type(conv) is nn.Conv2d  # not a subclass with its own arithmetic (e.g. Winograd)
        and conv.padding_mode == "zeros"
        and conv.groups == 1  # grouped bfloat16 convolutions with a residual fail in torch 2.13
        and not isinstance(conv.padding, str)
        and x.device.type == "cpu"
        and x.dtype in _FUSABLE_DTYPES
        and conv.weight.dtype == x.dtype
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)  # oneDNN's native layout (optimized models)
        and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
    )


def _same_layout(residual: torch.Tensor, x: torch.Tensor) -> bool:
    return residual.dtype == x.dtype and residual.is_contiguous(memory_format=torch.channels_last)


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def conv_relu(
    conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor | None = None, *, overwrite_residual: bool = False
) -> torch.Tensor:
    """``relu(conv(x) + residual)`` (or ``relu(conv(x))``), shaped as ``conv``'s output.

    ``residual`` must have the output's shape. It is left unchanged and the result is a fresh tensor, unless
    ``overwrite_residual``: then a fused kernel writes the result into ``residual`` and returns it. That saves
    allocating the output (and, for maps over glibc's 32 MB mmap threshold, faulting in every page of it,
    which can cost more than the convolution itself) and oneDNN's copy of ``residual`` into it. Only for a
    residual nothing else reads afterwards.
    """
    if not fusable(conv, x) or not (residual is None or _same_layout(residual, x)):
        return add_relu_(conv(x), residual)
    padding, stride, dilation, groups = _geometry(conv)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, padding, stride, dilation, groups, "relu", [], ""
        )
    if overwrite_residual:
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x, conv.weight, conv.bias, padding, stride, dilation, groups, "add", None, "relu", [], ""
        )
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, conv.weight, conv.bias, padding, stride, dilation, groups, "add", None, "relu", [], ""
    )


def add_relu_(out: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(out + residual)`` written into ``out``, a convolution's (or norm's) fresh output.

    In place: a fresh map per block costs a full write (and page faults) on the CPU, and neither a
    convolution's nor a norm's backward reads its output.
    """
    if residual is not None:
        out += residual
    return F.relu_(out)


def _fused_convolution_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of a fused convolution as of ``F.conv2d``, so ``fpn bench`` counts the fused layers (the post-ops
    count nothing, as a separate ReLU or add counts nothing)."""
    binary = len(args) > 9  # (X, W, B, ...) has 10 arguments, (X, other, W, B, ...) 13
    return conv_flop_count(list(x_shape), list(args[1] if binary else args[0]), list(out_shape), transposed=False)


def _fused_convolution_flops_inplace(other_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
    """The in-place variant's: ``(other, X, W, B, ...)``."""
    return conv_flop_count(list(x_shape), list(args[0]), list(other_shape), transposed=False)


for _packet, _formula in (
    (torch.ops.mkldnn._convolution_pointwise, _fused_convolution_flops),
    (torch.ops.mkldnn._convolution_pointwise_, _fused_convolution_flops_inplace),
):
    if _packet not in flop_registry:
        register_flop_formula(_packet)(_formula)
