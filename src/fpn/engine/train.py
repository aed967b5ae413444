"""Training: SGD with warm-up and a step or cosine schedule, checkpoints that resume exactly, logs and curves.

``train(run_config, "runs/x")`` writes into the run folder:

* ``config.yaml``: the :class:`~fpn.engine.config.RunConfig` (class names filled in from the data);
* ``last.pt``: everything needed to continue (weights, optimiser, schedule position, RNG states, the run
  config), written atomically every ``train.checkpoint_every`` iterations, at the end, and when a signal
  stops the run;
* ``model.pt``: the final weights, a checkpoint :func:`~fpn.detection.checkpoint.load_detector` reads;
* ``log.jsonl`` (one JSON object per logged step and per evaluation), TensorBoard event files and
  ``curves.png`` (losses, learning rate, AP), and ``metrics.json`` (the final evaluation).

Nothing is lost (issue 14): the folder is locked for the run's lifetime, so a second run into it stops
with a message instead of truncating the first one's files (:mod:`fpn.engine.run_folder`); Ctrl-C or
SIGTERM stops after the iteration under way with a checkpoint (:mod:`fpn.engine.stop`); a run killed at any
moment, even while writing a checkpoint, resumes from the last one it wrote; and a file that cannot be
written (full disk, read-only folder) stops the run with one line naming it, the earlier files intact.

Reproducibility: the data order and every random draw (flips, multi-scale sizes, anchor and RoI sampling)
derive from ``(seed, iteration, slot in the global batch)`` (see :mod:`fpn.engine.distributed`). So
``resume=True`` after an interruption continues with the same batches and draws and, on the CPU, ends
with the same weights as an uninterrupted run; and with ``train.micro_batch = 1`` (each image its own
forward pass, gradients accumulated) a ``torchrun`` run over N processes computes the same objective,
the mean of per-image losses over the global batch, as one process with the whole global batch. A resume
that changes the budget continues the learning-rate schedule from where it was (:mod:`fpn.engine.schedule`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fpn.data import RandomHorizontalFlip, load_dataset, load_spec, resolve_data
from fpn.data.dataset import DetectionDataset
from fpn.detection import FasterRCNN, save_detector
from fpn.device import resolve_device
from fpn.engine import distributed as ddp
from fpn.engine.config import RUNTIME_KEYS, RunConfig
from fpn.engine.evaluate import evaluate
from fpn.engine.run_folder import RunLock, init_worker, writing
from fpn.engine.run_log import RunLog, progress_line
from fpn.engine.schedule import Plan, Schedule, continuation, describe_budget, run_budget
from fpn.engine.step import NonFiniteStep, train_step
from fpn.engine.stop import StopRequest, TrainingInterrupted
from fpn.errors import CheckpointError, ConfigError, DataError, FpnError
from fpn.io import atomic_write_text, load_matching, read_state_dict

__all__ = ["RunLog", "Schedule", "TrainingDiverged", "TrainingInterrupted", "train"]

logger = logging.getLogger(__name__)


class TrainingDiverged(FpnError):
    """A loss or the gradient became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------------ data


class KeyedDataset(Dataset):
    """Items addressed by :class:`~fpn.engine.distributed.ImageSlot`: the slot's key seeds the image's flip."""

    def __init__(self, dataset: DetectionDataset, flip: bool) -> None:
        self.dataset = dataset
        self.flip = flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, slot: ddp.ImageSlot) -> tuple[torch.Tensor, dict[str, Any], int]:
        image, target = self.dataset[slot.index]
        if self.flip:
            generator = torch.Generator().manual_seed(ddp.derive_seed(slot.key, 0))
            image, target = RandomHorizontalFlip(0.5, generator)(image, target)
        return image, target, slot.key


def _collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any], int]]) -> tuple[list, list, list[int]]:
    return [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch]


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``: fp16 on CUDA, bf16 on a CPU with bf16 instructions, else None."""
    if device.type == "cuda":
        return torch.float16
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if device.type == "cpu" and supported is not None and supported():
        return torch.bfloat16
    logger.warning("train.amp: this %s has no bf16 support; training in fp32", device.type)
    return None


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}


def has_split(data: str, split: str) -> bool:
    return split in load_spec(resolve_data(data)).splits


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


# ------------------------------------------------------------------------------------------- the loop

#: The train settings that make the budget; a resume reports their change in its own line.
BUDGET_KEYS = ("iters", "epochs", "minutes")


@dataclass
class _State:
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


def train(
    run_config: RunConfig | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train the detector ``run_config`` describes into ``out_dir``; returns the path of ``model.pt``.

    With ``resume=True`` the run continues from ``out_dir/last.pt``; ``run_config`` may then be ``None``
    (the checkpoint's is used) or change only the train settings (e.g. a longer budget). A run that is
    already complete is left as it is. ``on_step``, called after every iteration with the iteration number
    and its losses, lets a caller watch or interrupt. Under ``torchrun`` every process calls this; only
    rank 0 writes files and holds the folder's lock.

    Raises :class:`~fpn.engine.stop.TrainingInterrupted` (a ``KeyboardInterrupt``) when SIGINT or SIGTERM
    stopped the run, after writing ``last.pt``.
    """
    run_dir = Path(out_dir)
    info = ddp.dist_info()
    with contextlib.ExitStack() as stack:
        lock = stack.enter_context(RunLock(run_dir)) if info.is_main else None
        checkpoint, run_config = _resume_point(run_dir, run_config, resume=resume, main=info.is_main)
        config = _resolved_config(run_config, checkpoint, run_dir / "last.pt")
        config.validate()
        device = resolve_device(config.train.device, info.local_rank)
        owns_group = info.distributed and not torch.distributed.is_initialized()  # else the caller's to close
        ddp.init_distributed(info, device)
        try:
            worker_init = functools.partial(init_worker, lock.worker_init() if lock is not None else None)
            return _train(
                config, run_dir, info, device, checkpoint,
                resume=resume, progress=progress, on_step=on_step, worker_init=worker_init,
            )  # fmt: skip
        finally:
            if owns_group:
                ddp.cleanup_distributed()


def _resume_point(
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


def _resolved_config(run_config: RunConfig | None, checkpoint: dict[str, Any] | None, where: Path) -> RunConfig:
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
    changed = [
        f"{k} {getattr(saved.train, k)} -> {getattr(run_config.train, k)}"
        for k in saved.train.__dict__
        if getattr(saved.train, k) != getattr(run_config.train, k) and k not in BUDGET_KEYS  # see _plan
    ]
    if changed:
        exact = all(c.split()[0] in RUNTIME_KEYS for c in changed)
        logger.warning(
            "resuming with changed train settings%s: %s", "" if exact else " (not exact)", "; ".join(changed)
        )
    saved.train = run_config.train
    return saved


def _boxes(dataset: DetectionDataset) -> int:
    """The boxes a model learns from or is scored against (crowd regions, left out of both, not counted)."""
    if dataset.include_crowd:
        return dataset.num_objects()
    return sum(int((~record.iscrowd).sum()) for record in dataset.records)


def _training_set(config: RunConfig) -> DetectionDataset:
    """The train split, refused when it has nothing to learn from; its class names go into the config."""
    dataset = load_dataset(config.data, "train")
    if _boxes(dataset) == 0:
        raise DataError(
            f"{dataset.source}: the training split has no objects (0 boxes in {len(dataset)} images); nothing to learn"
        )
    config.model.class_names = list(dataset.names)
    config.model.category_ids = list(dataset.category_ids)
    return dataset


def _val_set(config: RunConfig, info: ddp.DistInfo) -> DetectionDataset | None:
    """The val split for the main process's evaluations, if the data has one."""
    if not (info.is_main and has_split(config.data, "val")):
        return None
    val = load_dataset(config.data, "val")
    if _boxes(val) == 0:
        logger.warning("%s: the val split has no objects, so AP is undefined; evaluations count detections", val.source)
    return val


def _restore(
    checkpoint: dict[str, Any],
    model: FasterRCNN,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run_dir: Path,
    info: ddp.DistInfo,
) -> _State:
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
    state = _State(iteration, float(checkpoint.get("elapsed", 0.0)), iteration)
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


def _plan(
    checkpoint: dict[str, Any] | None, config: RunConfig, per_epoch: int, state: _State, run_dir: Path, main: bool
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
    say("resuming %s at iteration %d %s; %s", run_dir, state.iteration, where, how)
    return plan


def _train(
    config: RunConfig,
    run_dir: Path,
    info: ddp.DistInfo,
    device: torch.device,
    checkpoint: dict[str, Any] | None,
    *,
    resume: bool,
    progress: bool,
    on_step: Callable[[int, dict[str, float]], None] | None,
    worker_init: Callable[[int], None],
) -> Path:
    cfg = config.train
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process and every repetition

    dataset = _training_set(config)
    model = FasterRCNN(config.model).to(device)
    model.transform.generator = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.channels_last:
        model.use_channels_last()
    if cfg.winograd and device.type == "cpu":
        model.use_winograd()
    amp = amp_dtype(device) if cfg.amp else None
    # Loss scaling is for fp16's narrow range; bf16 has fp32's exponent and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    state = _State()
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, scaler, run_dir, info)
    train_model: nn.Module = model
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    sampler = ddp.ShardedBatchSampler(
        len(dataset), cfg.batch_size, seed=cfg.seed, rank=info.rank, world_size=info.world_size, start=state.iteration
    )
    model_path = run_dir / "model.pt"
    plan = _plan(checkpoint, config, sampler.per_epoch, state, run_dir, info.is_main)
    if plan is None:
        return model_path
    val = _val_set(config, info)
    log = None
    if info.is_main:
        with writing(run_dir / "config.yaml", "the run config"):
            atomic_write_text(config.to_yaml(), run_dir / "config.yaml")
        finishing = checkpoint is not None and plan.done(state.iteration, state.elapsed)
        resume_from = state.iteration if checkpoint is not None else 0 if resume else None
        log = RunLog(run_dir, resume_from=resume_from, replay_eval=finishing)
        logger.info(
            "training %s on %s: %d images, %s, batches of %d%s -> %s",
            config.model.pyramid.design, config.data, len(dataset), describe_budget(plan.total, plan.budget),
            sampler.global_batch, f" ({info.world_size} processes)" if info.distributed else "", run_dir,
        )  # fmt: skip

    loop = _Loop(
        config, model, train_model, optimizer, scaler, device, info, log, sampler, plan, amp, StopRequest(), worker_init
    )
    last_eval: dict[str, Any] | None = None
    try:
        last_eval = loop.run(state, dataset, val, run_dir, progress=progress, on_step=on_step)
    finally:
        if log is not None:
            with contextlib.suppress(Exception):
                log.plot()
            log.close()
    if info.is_main:
        extra = {"run_config": config.to_dict(), "iteration": state.iteration}
        if last_eval is not None:
            extra["metrics"] = last_eval["metrics"]
        with writing(model_path, "the final weights", kept=f"{run_dir / 'last.pt'} holds them"):
            save_detector(model, model_path, **extra)
    ddp.barrier()
    return model_path


@dataclass
class _Loop:
    """The iteration loop and its bookkeeping, split from :func:`train` to keep each part readable."""

    config: RunConfig
    model: FasterRCNN  # the detector itself (checkpoints, evaluation, its transform's generator)
    train_model: nn.Module  # what the forward pass runs: the detector, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    info: ddp.DistInfo
    log: RunLog | None  # None outside the main process
    sampler: ddp.ShardedBatchSampler
    plan: Plan  # the budget, and the progress through it the schedule follows
    amp: torch.dtype | None  # autocast to this dtype (mixed precision), or None
    stop: StopRequest  # raised by SIGINT / SIGTERM during the iterations
    worker_init: Callable[[int], None] | None = None  # data-loading processes' worker_init_fn

    def __post_init__(self) -> None:
        self.cfg = self.config.train
        self.schedule = Schedule.from_config(self.cfg)

    def run(
        self,
        state: _State,
        dataset: DetectionDataset,
        val: DetectionDataset | None,
        run_dir: Path,
        *,
        progress: bool,
        on_step: Callable[[int, dict[str, float]], None] | None,
    ) -> dict[str, Any] | None:
        """Iterate until the budget is spent; checkpoint, log and evaluate on the way and at the end."""
        cfg, info, plan = self.cfg, self.info, self.plan
        started = time.perf_counter() - state.elapsed
        done = plan.done(state.iteration, state.elapsed)
        loader = DataLoader(
            KeyedDataset(dataset, cfg.flip),
            batch_sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=self.worker_init if cfg.workers else None,
        )
        bar = tqdm(
            total=plan.total, initial=state.iteration, desc="train", unit="it", dynamic_ncols=True,
            disable=not (progress and info.is_main), file=sys.stderr,
        )  # fmt: skip
        last_eval, eval_iteration = None, -1
        self.model.train()
        try:
            with self.stop.handling():
                for images, targets, keys in [] if done else loader:
                    it = state.iteration
                    lr = self.schedule(it, plan.progress(it, time.perf_counter() - started))
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    step_start = time.perf_counter()
                    losses, grad_norm, out_of_time, stop = self.step(images, targets, keys, it, started)
                    state.window_time += time.perf_counter() - step_start
                    state.iteration = it = it + 1
                    state.elapsed = time.perf_counter() - started
                    for key, value in {"loss": sum(losses.values()), **losses, "grad_norm": grad_norm}.items():
                        state.window[key] = state.window.get(key, 0.0) + value
                    state.window_count += 1
                    bar.update()
                    bar.set_postfix(loss=f"{sum(losses.values()):.3f}", lr=f"{lr:.2e}", refresh=False)
                    finished = out_of_time or (plan.total is not None and it >= plan.total)
                    if info.is_main and (it % cfg.log_every == 0 or finished):
                        count = state.window_count
                        seconds = state.window_time / count  # the steps alone, without evaluations and checkpoints
                        record = {"type": "train", "iteration": it, "epoch": round(self.sampler.epoch_of(it), 4)}
                        record.update(lr=lr, **{k: v / count for k, v in state.window.items()})
                        record.update(sec_per_iter=round(seconds, 4), elapsed=round(state.elapsed, 2))
                        self.log.write(record)
                        if bar.disable:
                            logger.info(progress_line(record, plan.total, plan.budget))
                        state.window, state.window_count, state.window_time = {}, 0, 0.0
                    # Evaluate before checkpointing: a run killed in between redoes both, logging the same lines.
                    if cfg.eval_every and it % cfg.eval_every == 0 and not finished:
                        last_eval, eval_iteration = self.evaluate(val, it), it
                    if it % cfg.checkpoint_every == 0 or finished:
                        self.checkpoint(state, run_dir, plot=not finished)  # the end of the run plots anyway
                    if on_step is not None:
                        on_step(it, losses)
                    if finished:
                        break
                    # Every process stops at the same iteration: the step's collective carried the request.
                    if stop or (not info.distributed and self.stop):
                        self.interrupt(state, run_dir)
        finally:
            bar.close()
        if state.iteration > state.checkpoint_iteration:
            self.checkpoint(state, run_dir)
        if eval_iteration != state.iteration:
            last_eval = self.evaluate(val, state.iteration)
        if last_eval is not None and info.is_main:
            payload = {"iteration": state.iteration, **{k: last_eval[k] for k in ("metrics", "per_level", "images")}}
            with writing(run_dir / "metrics.json", "the metrics"):
                atomic_write_text(json.dumps(payload, indent=2) + "\n", run_dir / "metrics.json")
        return last_eval

    def step(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, Any]],
        keys: list[int],
        iteration: int,
        started: float,
    ) -> tuple[dict[str, float], float, bool, bool]:
        """One optimiser step over this process's share of the global batch; collective on every rank.

        Returns the losses (means over processes), the gradient norm, whether the time budget is spent, and
        whether any process was asked to stop (a signal).
        """
        device = self.device
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [_to_device(target, device) for target in targets]
        flags: list[float] = []

        def seed(chunk: range) -> None:
            # Seed this forward pass's draws (multi-scale size, anchor and RoI sampling) from its first image's
            # key: independent of how the global batch is split across processes, and of resumption.
            torch.manual_seed(ddp.derive_seed(keys[chunk.start], 1))
            self.model.transform.generator.manual_seed(ddp.derive_seed(keys[chunk.start], 2))

        def reduce(sums: dict[str, torch.Tensor]) -> dict[str, float]:
            # One collective per step: the mean losses over processes (a NaN anywhere is a NaN everywhere) and
            # whether any process ran out of time or was signalled, so that all processes stop together.
            over = self.budget_spent(started)
            local = torch.tensor([float(over), float(bool(self.stop))], device=device)
            packed = ddp.all_reduce_sum(torch.cat([torch.stack(list(sums.values())), local])).cpu().tolist()
            flags[:] = packed[-2:]
            return {k: v / self.info.world_size for k, v in zip(sums, packed)}

        try:
            result = train_step(
                self.train_model, self.optimizer, images, targets,
                micro_batch=self.cfg.micro_batch, amp_dtype=self.amp, scaler=self.scaler,
                grad_clip=self.cfg.grad_clip, seed=seed, reduce=reduce,
            )  # fmt: skip
        except NonFiniteStep as error:
            self.diverged(iteration + 1, str(error))  # raises TrainingDiverged
        return result.losses, result.grad_norm, flags[0] > 0, flags[1] > 0

    def budget_spent(self, started: float) -> bool:
        return self.plan.budget is not None and time.perf_counter() - started >= self.plan.budget

    def diverged(self, iteration: int, what: str) -> None:
        last = self.info.is_main and self.log is not None and (self.log.path.parent / "last.pt").is_file()
        where = f"last good checkpoint: {self.log.path.parent / 'last.pt'}" if last else "no checkpoint was written yet"
        if not self.info.is_main:
            where = "see rank 0 for the last good checkpoint"
        raise TrainingDiverged(f"training diverged at iteration {iteration} ({what}); {where}")

    def interrupt(self, state: _State, run_dir: Path) -> None:
        """Stop on a signal: checkpoint the iteration just done (unless that is written), then raise."""
        if state.checkpoint_iteration != state.iteration:
            self.checkpoint(state, run_dir)
        raise TrainingInterrupted(run_dir, state.iteration, self.info.world_size)

    def checkpoint(self, state: _State, run_dir: Path, *, plot: bool = False) -> None:
        """Write ``last.pt`` (main process) with everything a resumed run needs."""
        previous, state.checkpoint_iteration = state.checkpoint_iteration, state.iteration
        if not self.info.is_main:
            return
        path = run_dir / "last.pt"
        sampler_state = {**self.sampler.state_dict(), "iteration": state.iteration}
        progress = self.plan.progress(state.iteration, state.elapsed)
        schedule = {"kind": self.cfg.schedule, "iteration": state.iteration, "progress": progress}
        kept = f"{path} of iteration {previous} is unchanged" if previous >= 0 and path.is_file() else ""
        with writing(path, "the checkpoint", kept=kept):
            save_detector(
                self.model,
                path,
                run_config=self.config.to_dict(),
                optimizer=self.optimizer.state_dict(),
                scheduler={**schedule, "plan": self.plan.state_dict()},
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
                iteration=state.iteration,
                elapsed=state.elapsed,
                world_size=self.info.world_size,
                rng={**rng_states(self.model.transform.generator), "sampler": sampler_state},
                log_window=state.window_state(),
            )
        if plot:
            self.log.plot()

    def evaluate(self, val: DetectionDataset | None, iteration: int) -> dict[str, Any] | None:
        """Evaluate on the val split in the main process while the others wait."""
        result = None
        if self.info.is_main and val is not None:
            result = evaluate(self.model, val, batch_size=self.cfg.batch_size, device=self.device)
            record = {"type": "eval", "iteration": iteration, **result["metrics"], "per_level": result["per_level"]}
            self.log.write(record)
            logger.info("iteration %d: %s", iteration, _ap_text(result))
        self.model.train()
        ddp.barrier()
        return result


def _ap_text(result: dict[str, Any]) -> str:
    """``AP 12.3, AP50 25.0``; without objects in the val split AP is undefined, which it says."""
    metrics = result["metrics"]
    if metrics.get("AP") is None:
        detections = sum(row["total"] for row in result["per_level"].values())
        return f"AP undefined (the val split has no objects; {detections} detections)"
    return f"AP {metrics['AP']:.1f}, AP50 {metrics['AP50']:.1f}"
