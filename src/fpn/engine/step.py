"""One training step: the single body that ``fpn train``, ``fpn bench --mode train`` and ``fpn compare``'s memory
probe all run, so that what is timed and measured is what trains.

:func:`train_step` is forward (under autocast when asked), the losses' sum, backward, the gradient norm
(clipped when asked), the finiteness checks and the optimiser update, over one batch split into
micro-batches. The callers keep what is theirs: the training loop moves data to the device, seeds each
forward pass from its images' keys, averages the losses over processes and turns :class:`NonFiniteStep`
into its message naming the last good checkpoint; the bench times the stages; the probe reads memory.

Each micro-batch's loss is weighted by its share of the images (``len(chunk) / len(images)``), so the
accumulated gradient is the one of the mean loss over the whole batch, however it is split.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["NonFiniteStep", "StepResult", "train_step"]

#: ``stage(name)``: a context manager around the step's ``"backward"`` and ``"optimizer"`` parts (bench timing).
Stage = Callable[[str], contextlib.AbstractContextManager]


class NonFiniteStep(FloatingPointError):
    """A loss or the gradient norm of a step is NaN or infinite; the weights were not updated."""


@dataclass
class StepResult:
    """What a step reports: each loss (weighted mean over the batch, as ``reduce`` returned it) and the
    gradient norm before clipping."""

    losses: dict[str, float]
    grad_norm: float


def _to_floats(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """The losses as Python floats, read back in one transfer."""
    return dict(zip(sums, torch.stack(list(sums.values())).tolist()))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Sequence[torch.Tensor],
    targets: Sequence[dict[str, Any]],
    *,
    micro_batch: int | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    seed: Callable[[range], object] | None = None,
    reduce: Callable[[dict[str, torch.Tensor]], dict[str, float]] = _to_floats,
    stage: Stage | None = None,
) -> StepResult:
    """One optimiser step of a detector in training mode over ``images`` (``[3, H, W]`` each, on its device).

    * ``micro_batch``: images per forward pass (None or 0: all at once); gradients accumulate over the
      passes. Under ``DistributedDataParallel`` (``model`` the wrapper) only the last pass synchronises;
    * ``amp_dtype``: the forward passes under ``torch.autocast`` to it (None: the model's own dtype);
    * ``scaler``: fp16 loss scaling (its skipped steps are not divergence); None or disabled: plain steps;
    * ``grad_clip``: the largest global gradient norm (None: the norm is still measured, not clipped);
    * ``seed(chunk)``: called before each forward pass with its image indices, to seed that pass's random
      draws (multi-scale size, anchor and RoI sampling);
    * ``reduce(sums)``: the per-loss ``[]`` tensors summed over the passes -> the losses to report; the
      training loop averages them over processes here, a collective every rank makes before the checks;
    * ``stage(name)``: wraps ``"backward"`` and ``"optimizer"`` (the clip and the update), for timing.

    Raises :class:`NonFiniteStep` (message ``"<loss> is nan"`` or ``"the gradient norm is inf"``) before the
    update. The gradients are set to None before and after: a step holds none between calls, so a memory
    probe counts them in the step.
    """
    stage = stage or (lambda name: contextlib.nullcontext())
    micro = micro_batch or len(images)
    optimizer.zero_grad(set_to_none=True)
    chunks = [range(i, min(i + micro, len(images))) for i in range(0, len(images), micro)]
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    sums: dict[str, torch.Tensor | float] = {}
    for n, chunk in enumerate(chunks):
        if seed is not None:
            seed(chunk)
        weight = len(chunk) / len(images)
        sync = n == len(chunks) - 1 or not distributed
        with contextlib.nullcontext() if sync else model.no_sync():
            device_type = images[chunk.start].device.type
            with torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                losses = model([images[i] for i in chunk], [targets[i] for i in chunk])
            loss = sum(losses.values()) * weight
            with stage("backward"):
                (scaler.scale(loss) if scaler is not None else loss).backward()
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float() * weight
    reported = reduce(sums)
    for key, value in reported.items():
        if not math.isfinite(value):
            raise NonFiniteStep(f"{key} is {value}")
    scaling = scaler is not None and scaler.is_enabled()
    with stage("optimizer"):
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = grad_clip if grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm) and not scaling:  # the scaler skips such steps and backs off
            raise NonFiniteStep(f"the gradient norm is {grad_norm}")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return StepResult(reported, grad_norm)
