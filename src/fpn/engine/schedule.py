"""The learning-rate schedule and the run's progress through it, including when a resume changes the budget.

:class:`Schedule` turns ``(iteration, progress)`` into a learning rate; :class:`Plan` says how far through
its budget the run is. Both are pure functions of what a checkpoint stores, so a resumed run computes the
same learning rates as an uninterrupted one.

The rule when a resume changes the budget (``--resume --iters N`` or ``--minutes N``): the progress
reached so far is kept, and the rest of the new budget covers the rest of the way to the end. So the
learning rate goes on from where it was, without a jump back to the start (the schedule does not restart),
step milestones not yet passed fall proportionally within what is left, and the run still ends at the
schedule's end. Warm-up counts iterations and is not affected. A run that had finished its schedule
goes on at its final learning rate; a finished cosine schedule has reached 0, so extending it would not
change the weights and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fpn.engine.config import TrainConfig
from fpn.errors import ConfigError


@dataclass
class Schedule:
    """Learning rate = ``lr * warmup(iteration) * decay(progress)``; a pure function, so resuming is exact.

    Warm-up rises linearly from ``warmup_factor`` to 1 over ``warmup_iters`` iterations. ``progress`` is
    the fraction of the run done (see :class:`Plan`): the step schedule multiplies by ``gamma`` at each
    milestone fraction in ``steps``; the cosine one goes from 1 to 0.
    """

    lr: float
    warmup_iters: int
    warmup_factor: float
    kind: str
    steps: Sequence[float]
    gamma: float

    @classmethod
    def from_config(cls, config: TrainConfig) -> Schedule:
        return cls(
            config.lr, config.warmup_iters, config.warmup_factor, config.schedule, tuple(config.steps), config.gamma
        )

    def factor(self, iteration: int, progress: float) -> float:
        warm = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warm = self.warmup_factor * (1.0 - alpha) + alpha
        if self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        else:
            decay = self.gamma ** sum(progress >= s for s in self.steps)
        return warm * decay

    def __call__(self, iteration: int, progress: float) -> float:
        return self.lr * self.factor(iteration, progress)


def run_budget(config: TrainConfig, per_epoch: int) -> tuple[int | None, float | None]:
    """``(total iterations or None, seconds or None)`` of a run whose epochs hold ``per_epoch`` iterations."""
    if config.iters is not None:
        total = config.iters
    elif config.epochs:
        total = math.ceil(config.epochs * per_epoch)
    else:
        total = None
    return total, (config.minutes * 60.0 if config.minutes else None)


def describe_budget(total: int | None, budget: float | None) -> str:
    """``"200 iterations"``, ``"5 minutes"`` or both, for messages."""
    parts = [f"{total} iterations"] if total is not None else []
    if budget is not None:
        parts.append(f"{budget / 60:g} minutes")
    return " or ".join(parts) or "no budget"


@dataclass
class Plan:
    """How far through its budget the run is: ``progress`` from 0 at the start to 1 at the end.

    Progress follows iterations when the run has an iteration count (``total``; ``train.iters`` or
    ``train.epochs``), else wall time against ``budget`` seconds (a minutes-only run). It runs linearly from
    ``anchor_progress`` at the anchor (iteration ``anchor_iteration``, ``anchor_elapsed`` seconds) to 1 at
    the end. A fresh run's anchor is the start, so progress is simply ``iteration / total``; a resume that
    changes the budget moves the anchor to the resume point (see :meth:`resumed`).
    """

    total: int | None
    budget: float | None
    anchor_iteration: int = 0
    anchor_elapsed: float = 0.0
    anchor_progress: float = 0.0

    def progress(self, iteration: int, elapsed: float) -> float:
        if self.total is not None:
            return self._along(iteration, self.anchor_iteration, self.total)
        if self.budget:
            return self._along(elapsed, self.anchor_elapsed, self.budget)
        return 0.0

    def _along(self, position: float, start: float, end: float) -> float:
        if position >= end or end <= start:
            return 1.0
        return self.anchor_progress + (1.0 - self.anchor_progress) * (position - start) / (end - start)

    def done(self, iteration: int, elapsed: float) -> bool:
        """Whether the budget is spent: the iterations are done, or the time is up."""
        return (self.total is not None and iteration >= self.total) or (
            self.budget is not None and elapsed >= self.budget
        )

    def driver(self) -> tuple[str, float | None]:
        """What progress follows: the iteration count or, for a minutes-only run, the time budget."""
        return ("iterations", self.total) if self.total is not None else ("seconds", self.budget)

    def resumed(self, total: int | None, budget: float | None, iteration: int, elapsed: float) -> Plan:
        """This plan continued with a possibly new budget, from ``iteration`` and ``elapsed`` seconds.

        An unchanged driver keeps the plan as it is, so that the resumed run is exact. A changed one keeps
        the progress reached and spreads the rest over what is left of the new budget (the module's rule).
        """
        plan = Plan(total, budget, self.anchor_iteration, self.anchor_elapsed, self.anchor_progress)
        if plan.driver() == self.driver():
            return plan
        return Plan(total, budget, iteration, elapsed, self.progress(iteration, elapsed))

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Plan:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__})


def continuation(schedule: Schedule, old: Plan, new: Plan, iteration: int, elapsed: float, *, where: str) -> str:
    """How the schedule goes on after a resume at ``iteration``, in words; refuses a pointless extension.

    ``where`` (the checkpoint) names the run in the refusal.
    """
    progress = new.progress(iteration, elapsed)
    lr = schedule(iteration, progress)
    if new.done(iteration, elapsed):
        return "the budget is spent: evaluating and writing model.pt"
    if new.driver() == old.driver():
        return f"the {schedule.kind} schedule continues as planned (lr {lr:.2e})"
    if progress >= 1.0 and schedule.factor(schedule.warmup_iters, 1.0) == 0.0:
        raise ConfigError(
            f"{where}: the {schedule.kind} schedule ended at iteration {iteration} with learning rate 0, so "
            "training on would not change the weights; start a new run instead"
        )
    if progress >= 1.0:
        return f"the {schedule.kind} schedule had ended: training goes on at its final lr {lr:.2e}"
    if new.total is not None:
        left = f"the {new.total - iteration} iterations left"
    else:
        left = f"the {(new.budget - elapsed) / 60:.1f} minutes left"
    return f"the {schedule.kind} schedule goes on from {progress:.0%} through it (lr {lr:.2e}), stretched over {left}"
