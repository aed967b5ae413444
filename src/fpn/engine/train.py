"""Training: SGD with warm-up and a step or cosine schedule, checkpoints that resume exactly, logs and curves.

``train(run_config, "runs/x")`` writes into the run folder:

* ``config.yaml``: the :class:`~fpn.engine.config.RunConfig` (class names filled in from the data);
* ``last.pt``: everything needed to continue (weights, optimiser, schedule position, RNG states, the run
  config), written atomically every ``train.checkpoint_every`` iterations and at the end;
* ``model.pt``: the final weights, a checkpoint :func:`~fpn.checkpoints.load_detector` reads;
* ``log.jsonl`` (one JSON object per logged step and per evaluation), TensorBoard event files and
  ``curves.png`` (losses, learning rate, AP), and ``metrics.json`` (the final evaluation).

Reproducibility: the data order and every random draw (flips, multi-scale sizes, anchor and RoI sampling)
derive from ``(seed, iteration, slot in the global batch)`` (see :mod:`fpn.engine.distributed`). So
``resume=True`` after an interruption continues with the same batches and draws and, on the CPU, ends
with the same weights as an uninterrupted run; and with ``train.micro_batch = 1`` (each image its own
forward pass, gradients accumulated) a ``torchrun`` run over N processes computes the same objective,
the mean of per-image losses over the global batch, as one process with the whole global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fpn.checkpoints import atomic_write_text, load_matching, read_state_dict, save_detector
from fpn.data import RandomHorizontalFlip, load_dataset, load_spec, resolve_data
from fpn.data.dataset import DetectionDataset
from fpn.detection import FasterRCNN
from fpn.engine import distributed as ddp
from fpn.engine.config import RUNTIME_KEYS, RunConfig, TrainConfig
from fpn.engine.evaluate import evaluate
from fpn.errors import CheckpointError, ConfigError, FpnError

logger = logging.getLogger(__name__)


class TrainingDiverged(FpnError):
    """A loss or the gradient became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------- schedule


@dataclass
class Schedule:
    """Learning rate = ``lr * warmup(iteration) * decay(progress)``; a pure function, so resuming is exact.

    Warm-up rises linearly from ``warmup_factor`` to 1 over ``warmup_iters`` iterations. ``progress`` is
    the fraction of the run done (iterations, or wall time for a minutes-only budget): the step schedule
    multiplies by ``gamma`` at each milestone fraction in ``steps``; the cosine one goes from 1 to 0.
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


# ------------------------------------------------------------------------------------------------ logs


class RunLog:
    """``log.jsonl``, TensorBoard events and ``curves.png`` of a run (the main process only)."""

    def __init__(self, run_dir: Path, *, resume_from: int | None) -> None:
        self.path = run_dir / "log.jsonl"
        self.curves = run_dir / "curves.png"
        self.records: list[dict[str, Any]] = []
        if resume_from is not None and self.path.is_file():
            # Lines after the checkpoint were logged by the interrupted part; its replay logs them again.
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    if record.get("iteration", 0) <= resume_from:
                        self.records.append(record)
        atomic_write_text("".join(json.dumps(r) + "\n" for r in self.records), self.path)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir), purge_step=None if resume_from is None else resume_from + 1)
        except ImportError:  # tensorboard is a dependency, but a stripped install should still train
            logger.warning("tensorboard is not installed: no event files")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        step = record["iteration"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("iteration", "type"):
                prefix = "eval" if record["type"] == "eval" else "train"
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def plot(self) -> None:
        """Losses and learning rate against iterations, and AP where there were evaluations."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps = [r for r in self.records if r["type"] == "train"]
        evals = [r for r in self.records if r["type"] == "eval" and r.get("AP") is not None]
        figure = Figure(figsize=(13, 3.8), layout="constrained")
        FigureCanvasAgg(figure)
        ax_loss, ax_lr, ax_ap = figure.subplots(1, 3)
        its = [r["iteration"] for r in steps]
        for key in [k for k in (steps[0] if steps else {}) if k.startswith("loss")]:
            ax_loss.plot(its, [r.get(key, math.nan) for r in steps], label=key, lw=2 if key == "loss" else 1)
        ax_loss.set(title="training losses", xlabel="iteration", yscale="log" if steps else "linear")
        if steps:
            ax_loss.legend(fontsize=7)
        ax_lr.plot(its, [r["lr"] for r in steps])
        ax_lr.set(title="learning rate", xlabel="iteration")
        for key in ("AP", "AP50", "APs", "APl"):
            ax_ap.plot([r["iteration"] for r in evals], [r.get(key) for r in evals], marker="o", label=key)
        ax_ap.set(title="val AP", xlabel="iteration")
        if evals:
            ax_ap.legend(fontsize=7)
        figure.savefig(self.curves, dpi=90)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class _State:
    iteration: int = 0  # completed optimiser steps
    elapsed: float = 0.0  # seconds of training so far, over all resumed parts
    checkpoint_iteration: int = -1  # the iteration last.pt holds (-1: none written)


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
    (the checkpoint's is used) or change only the train settings (e.g. a longer budget). ``on_step``, called
    after every iteration with the iteration number and its losses, lets a caller watch or interrupt.
    Under ``torchrun`` every process calls this; only rank 0 writes files.
    """
    run_dir = Path(out_dir)
    info = ddp.dist_info()
    last_path, model_path = run_dir / "last.pt", run_dir / "model.pt"
    checkpoint = _read_resume_checkpoint(last_path) if resume else None
    if not resume and (last_path.exists() or model_path.exists()):
        raise ConfigError(f"{run_dir}: already holds a training run; resume it (--resume) or choose another folder")
    config = _resolved_config(run_config, checkpoint, last_path)
    config.validate()
    cfg = config.train

    device = ddp.resolve_device(cfg.device, info.local_rank)
    owns_group = info.distributed and not torch.distributed.is_initialized()  # else the caller's to close
    ddp.init_distributed(info, device)
    try:
        return _train(config, run_dir, info, device, checkpoint, progress=progress, on_step=on_step)
    finally:
        if owns_group:
            ddp.cleanup_distributed()


def _read_resume_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from")
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
        if getattr(saved.train, k) != getattr(run_config.train, k)
    ]
    if changed:
        exact = all(c.split()[0] in RUNTIME_KEYS for c in changed)
        logger.warning(
            "resuming with changed train settings%s: %s", "" if exact else " (not exact)", "; ".join(changed)
        )
    saved.train = run_config.train
    return saved


def _train(
    config: RunConfig,
    run_dir: Path,
    info: ddp.DistInfo,
    device: torch.device,
    checkpoint: dict[str, Any] | None,
    *,
    progress: bool,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> Path:
    cfg = config.train
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process and every repetition

    dataset = load_dataset(config.data, "train")
    config.model.class_names = list(dataset.names)
    config.model.category_ids = list(dataset.category_ids)
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
        load_matching(model, checkpoint["model"], source=str(run_dir / "last.pt"), what="the run's detector")
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler.is_enabled() and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        iteration = int(checkpoint["iteration"])
        state = _State(iteration, float(checkpoint.get("elapsed", 0.0)), iteration)
        set_rng_states(checkpoint["rng"], model.transform.generator)
        saved_world = int(checkpoint.get("world_size", info.world_size))
        if saved_world != info.world_size:
            logger.warning(
                "resuming with %d processes instead of %d: the data order changes", info.world_size, saved_world
            )
    train_model: nn.Module = model
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    sampler = ddp.ShardedBatchSampler(
        len(dataset), cfg.batch_size, seed=cfg.seed, rank=info.rank, world_size=info.world_size, start=state.iteration
    )
    total = cfg.iters if cfg.iters is not None else math.ceil(cfg.epochs * sampler.per_epoch) if cfg.epochs else None
    budget = cfg.minutes * 60.0 if cfg.minutes else None
    val = load_dataset(config.data, "val") if info.is_main and has_split(config.data, "val") else None
    log = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config.to_yaml(), run_dir / "config.yaml")
        log = RunLog(run_dir, resume_from=state.iteration if checkpoint is not None else None)
        logger.info(
            "training %s on %s: %d images, %s iterations of %d images%s -> %s",
            config.model.pyramid.design, config.data, len(dataset), total or "?", sampler.global_batch,
            f" ({info.world_size} processes)" if info.distributed else "", run_dir,
        )  # fmt: skip

    loop = _Loop(config, model, train_model, optimizer, scaler, device, info, log, sampler, total, budget, amp)

    last_eval: dict[str, Any] | None = None
    try:
        last_eval = loop.run(state, dataset, val, run_dir, progress=progress, on_step=on_step)
    finally:
        if log is not None:
            with contextlib.suppress(Exception):
                log.plot()
            log.close()
    model_path = run_dir / "model.pt"
    if info.is_main:
        extra = {"run_config": config.to_dict(), "iteration": state.iteration}
        if last_eval is not None:
            extra["metrics"] = last_eval["metrics"]
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
    total: int | None  # iterations of the run; None for a minutes-only budget
    budget: float | None  # seconds
    amp: torch.dtype | None  # autocast to this dtype (mixed precision), or None

    def __post_init__(self) -> None:
        self.cfg = self.config.train
        self.schedule = Schedule.from_config(self.cfg)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def progress_at(self, iteration: int, elapsed: float) -> float:
        if self.total is not None:
            return iteration / self.total
        return elapsed / self.budget if self.budget else 0.0

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
        cfg, info = self.cfg, self.info
        started = time.perf_counter() - state.elapsed
        done = (self.total is not None and state.iteration >= self.total) or (
            self.budget is not None and state.elapsed >= self.budget
        )
        loader = DataLoader(
            KeyedDataset(dataset, cfg.flip),
            batch_sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        bar = tqdm(
            total=self.total, initial=state.iteration, desc="train", unit="it", dynamic_ncols=True,
            disable=not (progress and info.is_main), file=sys.stderr,
        )  # fmt: skip
        window: dict[str, float] = {}
        window_count, window_time = 0, 0.0
        last_eval, eval_iteration = None, -1
        self.model.train()
        try:
            for images, targets, keys in [] if done else loader:
                it = state.iteration
                lr = self.schedule(it, self.progress_at(it, time.perf_counter() - started))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                step_start = time.perf_counter()
                losses, grad_norm, out_of_time = self.step(images, targets, keys, it, started)
                window_time += time.perf_counter() - step_start
                state.iteration = it = it + 1
                state.elapsed = time.perf_counter() - started
                for key, value in {"loss": sum(losses.values()), **losses, "grad_norm": grad_norm}.items():
                    window[key] = window.get(key, 0.0) + value
                window_count += 1
                bar.update()
                bar.set_postfix(loss=f"{sum(losses.values()):.3f}", lr=f"{lr:.2e}", refresh=False)
                finished = out_of_time or (self.total is not None and it >= self.total)
                if info.is_main and (it % cfg.log_every == 0 or finished):
                    seconds = window_time / window_count  # the steps alone, without evaluations and checkpoints
                    record = {"type": "train", "iteration": it, "epoch": round(self.sampler.epoch_of(it), 4), "lr": lr}
                    record.update({k: v / window_count for k, v in window.items()})
                    record.update(sec_per_iter=round(seconds, 4), elapsed=round(state.elapsed, 2))
                    self.log.write(record)
                    if bar.disable:
                        logger.info(_summary(record, self.total))
                    window, window_count, window_time = {}, 0, 0.0
                if it % cfg.checkpoint_every == 0 or finished:
                    self.checkpoint(state, run_dir, plot=not finished)  # the end of the run plots anyway
                if cfg.eval_every and it % cfg.eval_every == 0 and not finished:
                    last_eval, eval_iteration = self.evaluate(val, it), it
                if on_step is not None:
                    on_step(it, losses)
                if finished:
                    break
        finally:
            bar.close()
        if state.iteration > state.checkpoint_iteration:
            self.checkpoint(state, run_dir)
        if eval_iteration != state.iteration:
            last_eval = self.evaluate(val, state.iteration)
        if last_eval is not None and info.is_main:
            payload = {"iteration": state.iteration, **{k: last_eval[k] for k in ("metrics", "per_level", "images")}}
            atomic_write_text(json.dumps(payload, indent=2) + "\n", run_dir / "metrics.json")
        return last_eval

    def step(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, Any]],
        keys: list[int],
        iteration: int,
        started: float,
    ) -> tuple[dict[str, float], float, bool]:
        """One optimiser step over this process's share of the global batch; collective on every rank.

        Returns the losses (means over processes), the gradient norm, and whether the time budget is spent.
        """
        device, micro = self.device, self.cfg.micro_batch or len(images)
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [_to_device(target, device) for target in targets]
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor | float] = {}
        chunks = [range(i, min(i + micro, len(images))) for i in range(0, len(images), micro)]
        for n, chunk in enumerate(chunks):
            # Seed this forward pass's draws (multi-scale size, anchor and RoI sampling) from its first image's
            # key: independent of how the global batch is split across processes, and of resumption.
            torch.manual_seed(ddp.derive_seed(keys[chunk.start], 1))
            self.model.transform.generator.manual_seed(ddp.derive_seed(keys[chunk.start], 2))
            weight = len(chunk) / len(images)
            sync = n == len(chunks) - 1 or not isinstance(self.train_model, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                with torch.autocast(device.type, dtype=self.amp) if self.amp else contextlib.nullcontext():
                    losses = self.train_model([images[i] for i in chunk], [targets[i] for i in chunk])
                self.scaler.scale(sum(losses.values()) * weight).backward()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() * weight
        # One collective per step: the mean losses over processes (a NaN anywhere is a NaN everywhere) and
        # whether any process ran out of time, so that all processes stop together.
        names = list(sums)
        over = self.budget is not None and time.perf_counter() - started >= self.budget
        packed = torch.stack([*sums.values(), torch.tensor(float(over), device=device)])
        packed = ddp.all_reduce_sum(packed).cpu().tolist()
        losses_mean = {k: v / self.info.world_size for k, v in zip(names, packed)}
        for key, value in losses_mean.items():
            if not math.isfinite(value):
                self.diverged(iteration + 1, f"{key} is {value}")
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # the scaler skips such steps, backs off
            self.diverged(iteration + 1, f"the gradient norm is {grad_norm}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return losses_mean, grad_norm, packed[-1] > 0

    def diverged(self, iteration: int, what: str) -> None:
        last = self.info.is_main and self.log is not None and (self.log.path.parent / "last.pt").is_file()
        where = f"last good checkpoint: {self.log.path.parent / 'last.pt'}" if last else "no checkpoint was written yet"
        if not self.info.is_main:
            where = "see rank 0 for the last good checkpoint"
        raise TrainingDiverged(f"training diverged at iteration {iteration} ({what}); {where}")

    def checkpoint(self, state: _State, run_dir: Path, *, plot: bool = False) -> None:
        """Write ``last.pt`` (main process) with everything a resumed run needs."""
        state.checkpoint_iteration = state.iteration
        if not self.info.is_main:
            return
        sampler_state = {**self.sampler.state_dict(), "iteration": state.iteration}
        progress = self.progress_at(state.iteration, state.elapsed)
        save_detector(
            self.model,
            run_dir / "last.pt",
            run_config=self.config.to_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler={"kind": self.cfg.schedule, "iteration": state.iteration, "progress": progress},
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            iteration=state.iteration,
            elapsed=state.elapsed,
            world_size=self.info.world_size,
            rng={**rng_states(self.model.transform.generator), "sampler": sampler_state},
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
            logger.info("iteration %d: AP %s, AP50 %s", iteration, result["metrics"]["AP"], result["metrics"]["AP50"])
        self.model.train()
        ddp.barrier()
        return result


def _summary(record: dict[str, Any], total: int | None) -> str:
    of = f"/{total}" if total else ""
    eta = ""
    if total:
        seconds = record["sec_per_iter"] * (total - record["iteration"])
        eta = f", eta {int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"iter {record['iteration']}{of}: loss {record['loss']:.4f}, lr {record['lr']:.2e}{eta}"
