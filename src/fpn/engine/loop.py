"""The training loop: iterations over the sharded batches, logging, evaluation, checkpoints, stopping.

:class:`Loop` runs the iterations :func:`fpn.engine.train.train` set up: each one a step of
:func:`fpn.engine.step.train_step` over this process's share of the global batch, seeded from the images'
keys (:mod:`fpn.engine.distributed`); a log line every ``train.log_every`` iterations, an evaluation every
``train.eval_every``, ``last.pt`` every ``train.checkpoint_every`` and at the end; a signal stops it after the
iteration under way, checkpointed (:mod:`fpn.engine.stop`); a NaN or infinite loss raises
:class:`TrainingDiverged`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fpn.data import RandomHorizontalFlip
from fpn.data.dataset import DetectionDataset
from fpn.data.tiles import TiledDataset
from fpn.detection import FasterRCNN, save_detector
from fpn.engine import distributed as ddp
from fpn.engine.augmentation import Augment, PhasedBatches, mosaic_open
from fpn.engine.config import RunConfig
from fpn.engine.ema import ModelEMA
from fpn.engine.eval_curves import CURVES_FILE, save_curves
from fpn.engine.evaluate import evaluate
from fpn.engine.resume import RunState, rng_states
from fpn.engine.run_folder import writing
from fpn.engine.run_log import RunLog, progress_line
from fpn.engine.schedule import Plan, Schedule
from fpn.engine.step import NonFiniteStep, train_step
from fpn.engine.stop import StopRequest, TrainingInterrupted
from fpn.engine.tiling import TileOptions
from fpn.errors import FpnError
from fpn.io import atomic_write_text

logger = logging.getLogger(__name__)


class TrainingDiverged(FpnError):
    """A loss or the gradient became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------------ data


class KeyedDataset(Dataset):
    """Items addressed by :class:`~fpn.engine.distributed.ImageSlot` (or ``(slot, mosaic open)`` pairs, from
    :class:`~fpn.engine.augmentation.PhasedBatches`): the slot's key seeds the image's flip, its tile when the
    dataset is tiled, and the recipe's augmentation (:class:`~fpn.engine.augmentation.Augment`) when one is set."""

    def __init__(self, dataset: DetectionDataset | TiledDataset, flip: bool, augment: Augment | None = None) -> None:
        self.dataset = dataset
        self.flip = flip
        self.augment = augment if augment is not None and augment.active else None

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int, key: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Item ``index`` alone: the image, or its tile drawn from ``key`` when the dataset is tiled."""
        if isinstance(self.dataset, TiledDataset):
            return self.dataset.sample(index, ddp.derive_seed(key, 3))
        return self.dataset[index]

    def __getitem__(self, item: ddp.ImageSlot | tuple[ddp.ImageSlot, bool]) -> tuple[torch.Tensor, dict[str, Any], int]:
        slot, mosaic = item if isinstance(item, tuple) else (item, False)
        if self.augment is not None:
            image, target = self.augment(self.load, slot, len(self.dataset), mosaic=mosaic)
        else:
            image, target = self.load(slot.index, slot.key)
        if self.flip:
            generator = torch.Generator().manual_seed(ddp.derive_seed(slot.key, 0))
            image, target = RandomHorizontalFlip(0.5, generator)(image, target)
        return image, target, slot.key


def _collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any], int]]) -> tuple[list, list, list[int]]:
    return [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch]


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class Loop:
    """The iteration loop and its bookkeeping, split from :func:`fpn.engine.train.train` to keep each part readable."""

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
    ema: ModelEMA | None = None  # the weights' moving average (train.ema), updated after every step

    def __post_init__(self) -> None:
        self.cfg = self.config.train
        self.schedule = Schedule.from_config(self.cfg)

    def run(
        self,
        state: RunState,
        dataset: DetectionDataset | TiledDataset,
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
        phased = PhasedBatches(
            self.sampler, lambda it: mosaic_open(cfg, plan, it, time.perf_counter() - started)
        )  # mosaic closes for the end of the run, as far through it as the schedule counts
        loader = DataLoader(
            KeyedDataset(dataset, cfg.flip, Augment(cfg)),
            batch_sampler=phased,
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
                        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
                            last_eval, eval_iteration = self.evaluate(val, it), it  # the average, as at the end
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
        if self.ema is not None:  # last.pt holds the weights; the average is what is evaluated and saved
            self.ema.copy_to(self.model)
        if eval_iteration != state.iteration:
            last_eval = self.evaluate(val, state.iteration)
        if last_eval is not None and info.is_main:
            keys = ("metrics", "best_score_threshold", "per_level", "images")
            payload = {"iteration": state.iteration, **{k: last_eval.get(k) for k in keys}}
            with writing(run_dir / "metrics.json", "the metrics"):
                atomic_write_text(json.dumps(payload, indent=2) + "\n", run_dir / "metrics.json")
            if last_eval.get("curves") is not None:  # the plots' numbers; fpn train draws them (cli: no viz here)
                with writing(run_dir / CURVES_FILE, "the evaluation's curves"):
                    save_curves(last_eval["curves"], run_dir)
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
        if self.ema is not None:
            self.ema.update(self.model)
        return result.losses, result.grad_norm, flags[0] > 0, flags[1] > 0

    def budget_spent(self, started: float) -> bool:
        return self.plan.budget is not None and time.perf_counter() - started >= self.plan.budget

    def diverged(self, iteration: int, what: str) -> None:
        last = self.info.is_main and self.log is not None and (self.log.path.parent / "last.pt").is_file()
        where = f"last good checkpoint: {self.log.path.parent / 'last.pt'}" if last else "no checkpoint was written yet"
        if not self.info.is_main:
            where = "see rank 0 for the last good checkpoint"
        raise TrainingDiverged(f"training diverged at iteration {iteration} ({what}); {where}")

    def interrupt(self, state: RunState, run_dir: Path) -> None:
        """Stop on a signal: checkpoint the iteration just done (unless that is written), then raise."""
        if state.checkpoint_iteration != state.iteration:
            self.checkpoint(state, run_dir)
        raise TrainingInterrupted(run_dir, state.iteration, self.info.world_size, self.stop.signal)

    def checkpoint(self, state: RunState, run_dir: Path, *, plot: bool = False) -> None:
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
                **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            )
        if plot:
            self.log.plot()

    def evaluate(self, val: DetectionDataset | None, iteration: int) -> dict[str, Any] | None:
        """Evaluate on the val split in the main process while the others wait."""
        result = None
        if self.info.is_main and val is not None:
            tiling = TileOptions(size=self.cfg.tile) if self.cfg.tile is not None else None
            result = evaluate(self.model, val, batch_size=self.cfg.batch_size, device=self.device, tiling=tiling)
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
