"""An exponential moving average of the weights (``train.ema``), as Ultralytics' ``ModelEMA`` keeps it.

After every optimiser step each floating-point tensor of the detector's state dict (parameters and float
buffers) is folded into its average: ``avg = d * avg + (1 - d) * weight`` with
``d = decay * (1 - exp(-updates / tau))``. The ramp keeps the average close to the weights early in a run,
when old weights are far from good ones, and reaches ``decay`` after a few ``tau`` updates.

Every process of a ``torchrun`` run keeps its own average of the same weights (DDP makes them equal after
every step), with the same ``updates``, so the averages are equal without a collective. ``last.pt`` holds
the average beside the weights and a resumed run continues it exactly; at the end of the run the average
replaces the weights, is evaluated, and is what ``model.pt`` holds (its ``ema`` entry says so).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fpn.errors import CheckpointError

logger = logging.getLogger(__name__)


class ModelEMA:
    """The moving average of ``model``'s floating-point state, starting at its current values."""

    def __init__(self, model: nn.Module, decay: float, tau: float = 2000.0) -> None:
        self.decay, self.tau, self.updates = float(decay), float(tau), 0
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    def current_decay(self) -> float:
        """The decay of the next update's predecessor: ``decay * (1 - exp(-updates / tau))``."""
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights in (after an optimiser step)."""
        self.updates += 1
        d = self.current_decay()
        state = model.state_dict()
        averages = list(self.average.values())
        torch._foreach_mul_(averages, d)
        torch._foreach_add_(averages, [state[k].detach() for k in self.average], alpha=1.0 - d)

    def copy_to(self, model: nn.Module) -> None:
        """Put the average into ``model`` (its other entries, if any, unchanged)."""
        with torch.no_grad():
            state = model.state_dict()
            for key, value in self.average.items():
                state[key].copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block and its own weights again after it, bit for bit."""
        state = model.state_dict()
        saved = {k: state[k].detach().clone() for k in self.average}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in saved.items():
                    state[key].copy_(value)

    def describe(self) -> dict[str, Any]:
        """What ``model.pt`` says of its weights: the average, with its decay, ramp and update count."""
        return {"weights": "exponential moving average", "decay": self.decay, "tau": self.tau, "updates": self.updates}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "tau": self.tau, "updates": self.updates, "average": dict(self.average)}

    def load_state_dict(self, state: dict[str, Any], *, source: str = "checkpoint") -> None:
        average = state.get("average", {})
        if set(average) != set(self.average):
            raise CheckpointError(f"{source}: its weight average does not fit the run's detector")
        self.updates = int(state["updates"])
        with torch.no_grad():
            for key, value in average.items():
                self.average[key].copy_(value)


def make_ema(
    decay: float | None, tau: float, model: nn.Module, checkpoint: dict[str, Any] | None, *, source: str, main: bool
) -> ModelEMA | None:
    """The run's average (None when ``decay`` is None): fresh from the model's weights, or the checkpoint's."""
    if decay is None:
        return None
    ema = ModelEMA(model, decay, tau)
    if checkpoint is not None and checkpoint.get("ema"):
        ema.load_state_dict(checkpoint["ema"], source=source)
    elif checkpoint is not None and main:
        logger.warning("%s: holds no weight average; train.ema starts one from the resumed weights", source)
    return ema
