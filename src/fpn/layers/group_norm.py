"""GroupNorm whose backward pass is fast on channels-last (NHWC) CPU maps.

The CPU presets (``small-fpn``, ``tiny-fpn``) train from scratch with GroupNorm, channels-last. PyTorch's
GroupNorm *backward* kernel for channels-last maps barely uses a second thread and takes several times as
long as the NCHW kernel on the same data; reordering the maps to NCHW and back costs more than it saves,
and in a tiny-fpn training step that kernel is a noticeable share of the time (measured on the 2-core
machine of benchmarks/).

:class:`GroupNorm` (same parameters, state dict and forward as ``nn.GroupNorm``) computes the backward of
large channels-last maps from the closed form instead. With ``x`` viewed as ``[N, S, C]`` (``S = H * W``),
the saved ``mean``/``rstd`` per ``(n, g)`` and ``M = S * C / G`` elements per group:

* per ``(n, c)``: ``A = sum_s dy * x`` and ``B = sum_s dy`` (two reductions over the contiguous layout);
* ``dgamma = sum_n rstd * (A - mean * B)``, ``dbeta = sum_n B``;
* ``dx = dy * (gamma * rstd) + x * k2 + k3`` with per-group ``k2 = rstd^3 (mean * sB - sA) / M`` and
  ``k3 = -k2 * mean - rstd * sB / M``, where ``sA``, ``sB`` sum ``gamma * A`` and ``gamma * B`` over the
  group's channels: two fused multiply-adds over the map.

That beats the native kernel on large maps (:data:`CLOSED_FORM_MIN_VALUES` values per image and more) and
loses on small ones (fixed costs), which keep the native backward. bfloat16 maps with float32 parameters
(what bf16 autocast feeds a GroupNorm on the CPU) are widened to float32 for the backward, which still beats
the native bfloat16 forward + backward. A whole training step gains a little, tiny-fpn more than small-fpn
(measured on the same machine, the two backwards alternating in one process).
Results equal the native ones to float32 rounding (~1e-6 relative; tested against it, and with gradcheck
in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Values per image (C * H * W) from which the closed form beats the native channels-last backward (measured:
# a 42k-value map is still faster native, an 83k-value one much faster in closed form).
CLOSED_FORM_MIN_VALUES = 1 << 16


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with a fast backward on channels-last CPU maps (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if not _use_closed_form(self, x):
            return super().forward(x)
        return _ChannelsLastGroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)


def _use_closed_form(norm: nn.GroupNorm, x: Tensor) -> bool:
    return (
        torch.is_grad_enabled()
        and norm.affine
        and x.dim() == 4
        and x.device.type == "cpu"
        # bfloat16 maps with float32 parameters: what a GroupNorm sees under bf16 autocast (which leaves
        # group_norm in its input's dtype on the CPU); the backward then runs in float32.
        and (norm.weight.dtype == x.dtype in (torch.float32, torch.float64) or _bf16_map(norm, x))
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()  # a 1x1 map or a single channel is both: the native kernel is fine there
        and x[0].numel() >= CLOSED_FORM_MIN_VALUES
    )


def _bf16_map(norm: nn.GroupNorm, x: Tensor) -> bool:
    return x.dtype == torch.bfloat16 and norm.weight.dtype == torch.float32


class _ChannelsLastGroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
        n, c, h, w = x.shape
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, h * w, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        dtype = weight.dtype  # bfloat16 maps are widened: the sums over a group need float32
        grad_x, grad_weight, grad_bias = group_norm_backward_nhwc(
            grad.to(dtype), x.to(dtype), weight, mean.to(dtype), rstd.to(dtype), ctx.groups
        )
        grad_x = grad_x.to(x.dtype)
        needs = ctx.needs_input_grad
        return (
            grad_x if needs[0] else None,
            grad_weight if needs[1] else None,
            grad_bias if needs[2] else None,
            None,
            None,
        )


def group_norm_backward_nhwc(
    grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dgamma, dbeta)`` of GroupNorm for ``[N, C, H, W]`` maps; ``mean``/``rstd`` ``[N, G]`` as saved by
    ``torch.native_group_norm``. Any layout; channels-last inputs are read without copies."""
    n, c, h, w = x.shape
    per_group = c // groups
    count = h * w * per_group
    xv = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # views for channels-last maps
    dy = grad.permute(0, 2, 3, 1).reshape(n, h * w, c)
    sum_dy_x = (dy * xv).sum(1)  # [N, C]
    sum_dy = dy.sum(1)  # [N, C]
    mean, rstd = mean.reshape(n, groups, 1), rstd.reshape(n, groups, 1)
    group_a = (sum_dy_x * weight).view(n, groups, per_group).sum(2, keepdim=True)
    group_b = (sum_dy * weight).view(n, groups, per_group).sum(2, keepdim=True)
    k2 = rstd.pow(3) * (mean * group_b - group_a) / count  # [N, G, 1]
    k3 = -k2 * mean - rstd * group_b / count

    def per_channel(t: Tensor) -> Tensor:  # [N, G, 1 or Cg] -> [N, 1, C]
        return t.expand(n, groups, per_group).reshape(n, 1, c)

    k1 = (rstd * weight.view(1, groups, per_group)).reshape(n, 1, c)
    grad_x = torch.addcmul(per_channel(k3), dy, k1)
    grad_x.addcmul_(xv, per_channel(k2))
    grad_weight = ((sum_dy_x - per_channel(mean).squeeze(1) * sum_dy) * per_channel(rstd).squeeze(1)).sum(0)
    return grad_x.view(n, h, w, c).permute(0, 3, 1, 2), grad_weight, sum_dy.sum(0)
