"""What a training checkpoint holds and how a run continues from it (:func:`fpn.engine.train.train`'s resume).

* :func:`resume_point`: the checkpoint a run continues from (``last.pt``, checked to be a resumable one), or
  none: a fresh run, or one killed before its first checkpoint;
* :func:`resolved_config`: the run config to run, on resume the checkpoint's with the allowed train changes;
* :func:`rng_states` / :func:`set_rng_states`: every RNG state, in types ``torch.load(weights_only=True)``
  reads back;
* :class:`RunState` and :func:`restore`: the run's position (iteration, time, the log window) and the
  weights, optimiser, scaler and RNG states put back from a checkpoint;
* :func:`run_plan`: the budget a run follows, on resume continued from the checkpoint's (a resume that
  changes the budget continues the schedule from where it was, :mod:`fpn.engine.schedule`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpn.detection import FasterRCNN
from fpn.engine import distributed as ddp
from fpn.engine.config import RUNTIME_KEYS, RunConfig
from fpn.engine.schedule import Plan, Schedule, continuation, describe_budget, run_budget
from fpn.errors import CheckpointError, ConfigError, FpnError
from fpn.io import load_matching, read_state_dict

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ RNG states


def rng_states(transform_generator: torch.Generator) -> dict[str, Any]:
    """All RNG states, in types ``torch.load(weights_only=True)`` reads back."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "transform": transform_generator.get_state(),
    }


def set_rng_states(states: dict[str, Any], transform_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    transform_generator.set_state(states["transform"])


# ------------------------------------------------------------------------------------ the run's state

#: The train settings that make the budget; a resume reports their change in its own line.
BUDGET_KEYS = ("iters", "epochs", "minutes")


@dataclass
class RunState:
    iteration: int = 0  # completed optimiser steps
    elapsed: float = 0.0  # seconds of training so far, over all resumed parts
    checkpoint_iteration: int = -1  # the iteration last.pt holds (-1: none written)
    # The steps since the last log line (sums of losses, count, seconds): checkpointed, so that the first
    # line after a resume averages the same steps as an uninterrupted run's.
    window: dict[str, float] = field(default_factory=dict)
    window_count: int = 0
    window_time: float = 0.0

    def window_state(self) -> dict[str, Any]:
        return {"sums": dict(self.window), "count": self.window_count, "seconds": self.window_time}


# ------------------------------------------------------------------------------------------- resuming


def resume_point(
    run_dir: Path, run_config: RunConfig | None, *, resume: bool, main: bool
) -> tuple[dict[str, Any] | None, RunConfig | None]:
    """The checkpoint to continue from (None: start at iteration 0) and the run config to start with.

    A run killed before its first checkpoint left only its ``config.yaml``: resuming it starts it again.
    """
    last_path = run_dir / "last.pt"
    if not resume:
        if last_path.exists() or (run_dir / "model.pt").exists():
            raise ConfigError(f"{run_dir}: already holds a training run; resume it (--resume) or choose another folder")
        return None, run_config
    if last_path.is_file():
        return _read_resume_checkpoint(last_path), run_config
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{last_path}: no checkpoint to resume from")
    if main:
        logger.info("%s: no checkpoint yet (the run stopped before its first one); starting it again", run_dir)
    return None, run_config if run_config is not None else RunConfig.load(saved)


def _read_resume_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = read_state_dict(path)
    for key in ("run_config", "optimizer", "iteration", "rng", "model"):
        if key not in checkpoint:
            raise CheckpointError(f"{path}: not a resumable training checkpoint (no '{key}' entry)")
    return checkpoint


def resolved_config(run_config: RunConfig | None, checkpoint: dict[str, Any] | None, where: Path) -> RunConfig:
    """The config to run: the given one, or on resume the checkpoint's with allowed train changes."""
    if checkpoint is None:
        if run_config is None:
            raise ConfigError("train: no run config given")
        return RunConfig.from_dict(run_config.to_dict())  # a copy: class names are filled in below
    saved = RunConfig.from_dict(checkpoint["run_config"], where=str(where))
    if run_config is None:
        return saved
    if run_config.data != saved.data:
        raise ConfigError(f"{where}: the run trained on data {saved.data!r}, not {run_config.data!r}")
    saved_model, given_model = saved.model.__dict__.copy(), run_config.model.__dict__.copy()
    for d in (saved_model, given_model):
        d.pop("class_names"), d.pop("category_ids")  # filled in from the data; the preset's do not matter
    if saved_model != given_model:
        raise ConfigError(f"{where}: the model config differs from the run's; resume with the run's config.yaml")
    started, given = saved.train.weights, run_config.train.weights
    if given is not None and given != started:
        began = f"from --weights {started}" if started else "without --weights"
        raise ConfigError(f"{where}: the run started {began}; a resume continues from its checkpoint, not from {given}")
    changed = [
        f"{k} {getattr(saved.train, k)} -> {getattr(run_config.train, k)}"
        for k in saved.train.__dict__
        if getattr(saved.train, k) != getattr(run_config.train, k) and k not in (*BUDGET_KEYS, "weights")
    ]  # the budget: see run_plan; the weights: where the run started, which a resume does not change
    if changed:
        exact = all(c.split()[0] in RUNTIME_KEYS for c in changed)
        logger.warning(
            "resuming with changed train settings%s: %s", "" if exact else " (not exact)", "; ".join(changed)
        )
    saved.train = dataclasses.replace(run_config.train, weights=started)
    return saved


def restore(
    checkpoint: dict[str, Any],
    model: FasterRCNN,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run_dir: Path,
    info: ddp.DistInfo,
) -> RunState:
    """Put the checkpoint's weights, optimiser, scaler and RNG states back; the run's state at it."""
    load_matching(model, checkpoint["model"], source=str(run_dir / "last.pt"), what="the run's detector")
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler.is_enabled() and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    set_rng_states(checkpoint["rng"], model.transform.generator)
    saved_world = int(checkpoint.get("world_size", info.world_size))
    if saved_world != info.world_size:
        logger.warning("resuming with %d processes instead of %d: the data order changes", info.world_size, saved_world)
    iteration = int(checkpoint["iteration"])
    state = RunState(iteration, float(checkpoint.get("elapsed", 0.0)), iteration)
    window = checkpoint.get("log_window") or {}
    state.window = {k: float(v) for k, v in window.get("sums", {}).items()}
    state.window_count, state.window_time = int(window.get("count", 0)), float(window.get("seconds", 0.0))
    return state


def _saved_plan(checkpoint: dict[str, Any], per_epoch: int) -> Plan:
    """The plan the checkpointed run followed (older checkpoints: the budget it was started with)."""
    saved = (checkpoint.get("scheduler") or {}).get("plan")
    if isinstance(saved, dict):
        return Plan.from_state(saved)
    return Plan(*run_budget(RunConfig.from_dict(checkpoint["run_config"]).train, per_epoch))


def _is_final(model_path: Path, iteration: int) -> bool:
    """Whether ``model_path`` holds the run's final weights at ``iteration`` (written after its evaluation)."""
    if not model_path.is_file():
        return False
    with contextlib.suppress(FpnError):
        return read_state_dict(model_path).get("iteration") == iteration
    return False


def run_plan(
    checkpoint: dict[str, Any] | None, config: RunConfig, per_epoch: int, state: RunState, run_dir: Path, main: bool
) -> Plan | None:
    """The run's plan; on resume, say in one line where it continues and how. None: nothing left to do."""
    say = logger.info if main else logger.debug  # one line per run, not per process
    total, budget = run_budget(config.train, per_epoch)
    if checkpoint is None:
        return Plan(total, budget)
    saved = _saved_plan(checkpoint, per_epoch)
    plan = saved.resumed(total, budget, state.iteration, state.elapsed)
    new = describe_budget(total, budget)
    if plan.done(state.iteration, state.elapsed) and _is_final(run_dir / "model.pt", state.iteration):
        say(
            "%s: the run is already complete (iteration %d, budget %s); to train longer, resume with a larger "
            "--iters or --minutes", run_dir, state.iteration, new,
        )  # fmt: skip
        return None
    old = describe_budget(saved.total, saved.budget)
    where = f"of {new}" if old == new else f"with the budget {old} -> {new}"
    schedule = Schedule.from_config(config.train)
    how = continuation(schedule, saved, plan, state.iteration, state.elapsed, where=str(run_dir / "last.pt"))
    began = f" (fine-tuned from --weights {config.train.weights})" if config.train.weights else ""
    say("resuming %s at iteration %d %s%s; %s", run_dir, state.iteration, where, began, how)
    return plan
