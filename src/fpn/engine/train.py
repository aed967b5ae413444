"""Training: SGD with warm-up and a step or cosine schedule, checkpoints that resume exactly, logs and curves.

``train(run_config, "runs/x")`` writes into the run folder:

* ``config.yaml``: the :class:`~fpn.engine.config.RunConfig` (class names filled in from the data);
* ``last.pt``: everything needed to continue (weights, optimiser, schedule position, RNG states, the run
  config), written atomically every ``train.checkpoint_every`` iterations, at the end, and when a signal
  stops the run;
* ``model.pt``: the final weights (their moving average with ``train.ema``, :mod:`fpn.engine.ema`), a
  checkpoint :func:`~fpn.detection.checkpoint.load_detector` reads;
* ``log.jsonl`` (one JSON object per logged step and per evaluation), TensorBoard event files and
  ``curves.png`` (losses, learning rate, AP), and ``metrics.json`` (the final evaluation).

Nothing is lost (issue 14): the folder is locked for the run's lifetime, so a second run into it stops
with a message instead of truncating the first one's files (:mod:`fpn.engine.run_folder`); Ctrl-C or
SIGTERM stops after the iteration under way with a checkpoint (:mod:`fpn.engine.stop`); a run killed at any
moment, even while writing a checkpoint, resumes from the last one it wrote; and a file that cannot be
written (full disk, read-only folder) stops the run with one line naming it, the earlier files intact.

Fine-tuning: with ``train.weights`` (``fpn train --weights``) a run starts from a detection checkpoint, the
tensors that fit loaded and the box predictor's class rows remapped by class name
(:func:`fpn.detection.finetune.init_from_checkpoint`, which logs its one-line summary); a resume continues
from ``last.pt`` and never reads those weights again.

Reproducibility: the data order and every random draw (flips, multi-scale sizes, anchor and RoI sampling)
derive from ``(seed, iteration, slot in the global batch)`` (see :mod:`fpn.engine.distributed`). So
``resume=True`` after an interruption continues with the same batches and draws and, on the CPU, ends
with the same weights as an uninterrupted run; and with ``train.micro_batch = 1`` (each image its own
forward pass, gradients accumulated) a ``torchrun`` run over N processes computes the same objective,
the mean of per-image losses over the global batch, as one process with the whole global batch. A resume
that changes the budget continues the learning-rate schedule from where it was (:mod:`fpn.engine.schedule`).

This module sets a run up (data, detector, optimiser, processes) and finishes it (``model.pt``); the
iterations are :class:`fpn.engine.loop.Loop`'s, and what a checkpoint holds and how a run continues from
it is :mod:`fpn.engine.resume`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fpn.data import load_dataset, load_spec, resolve_data
from fpn.data.dataset import DetectionDataset
from fpn.data.tiles import TiledDataset
from fpn.detection import build_detector, save_detector
from fpn.detection.finetune import init_from_checkpoint
from fpn.device import resolve_device
from fpn.engine import distributed as ddp
from fpn.engine.config import RunConfig
from fpn.engine.ema import make_ema
from fpn.engine.loop import Loop, TrainingDiverged
from fpn.engine.resume import RunState, resolved_config, restore, resume_point, run_plan
from fpn.engine.run_folder import RunLock, init_worker, writing
from fpn.engine.run_log import RunLog
from fpn.engine.schedule import Schedule, describe_budget
from fpn.engine.stop import StopRequest, TrainingInterrupted
from fpn.errors import DataError
from fpn.io import atomic_write_text

__all__ = ["RunLog", "Schedule", "TrainingDiverged", "TrainingInterrupted", "train"]

logger = logging.getLogger(__name__)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``: fp16 on CUDA, bf16 on a CPU with bf16 instructions, else None."""
    if device.type == "cuda":
        return torch.float16
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if device.type == "cpu" and supported is not None and supported():
        return torch.bfloat16
    logger.warning("train.amp: this %s has no bf16 support; training in fp32", device.type)
    return None


def has_split(data: str, split: str) -> bool:
    return split in load_spec(resolve_data(data)).splits


def _boxes(dataset: DetectionDataset) -> int:
    """The boxes a model learns from or is scored against (crowd regions, left out of both, not counted)."""
    if dataset.include_crowd:
        return dataset.num_objects()
    return sum(int((~record.iscrowd).sum()) for record in dataset.records)


def _training_set(config: RunConfig) -> DetectionDataset | TiledDataset:
    """The train split, refused when it has nothing to learn from; its class names go into the config. With
    ``train.tile`` its items are tiles cut on the fly (:class:`~fpn.data.tiles.TiledDataset`)."""
    dataset = load_dataset(config.data, "train")
    if _boxes(dataset) == 0:
        raise DataError(
            f"{dataset.source}: the training split has no objects (0 boxes in {len(dataset)} images); nothing to learn"
        )
    config.model.class_names = list(dataset.names)
    config.model.category_ids = list(dataset.category_ids)
    cfg = config.train
    if cfg.tile is not None:
        return TiledDataset(dataset, cfg.tile, min_visible=cfg.tile_min_visible, seed=cfg.seed)
    return dataset


def _val_set(config: RunConfig, info: ddp.DistInfo) -> DetectionDataset | None:
    """The val split for the main process's evaluations, if the data has one."""
    if not (info.is_main and has_split(config.data, "val")):
        return None
    val = load_dataset(config.data, "val")
    if _boxes(val) == 0:
        logger.warning("%s: the val split has no objects, so AP is undefined; evaluations count detections", val.source)
    return val


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
        checkpoint, run_config = resume_point(run_dir, run_config, resume=resume, main=info.is_main)
        config = resolved_config(run_config, checkpoint, run_dir / "last.pt")
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
    model = build_detector(config.model).to(device)
    if checkpoint is None and cfg.weights:
        # Every process loads the same file into the same seeded model: the same weights everywhere, with no
        # collective (and DDP broadcasts rank 0's at its construction anyway).
        report = init_from_checkpoint(model, cfg.weights, config.model.class_names)
        if info.is_main:
            logger.info("%s", report.summary())
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
    state = RunState()
    if checkpoint is not None:
        state = restore(checkpoint, model, optimizer, scaler, run_dir, info)
    ema = make_ema(cfg.ema, cfg.ema_tau, model, checkpoint, source=str(run_dir / "last.pt"), main=info.is_main)
    train_model: nn.Module = model
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    sampler = ddp.ShardedBatchSampler(
        len(dataset), cfg.batch_size, seed=cfg.seed, rank=info.rank, world_size=info.world_size, start=state.iteration
    )
    model_path = run_dir / "model.pt"
    plan = run_plan(checkpoint, config, sampler.per_epoch, state, run_dir, info.is_main)
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

    loop = Loop(
        config, model, train_model, optimizer, scaler, device, info, log, sampler, plan, amp, StopRequest(),
        worker_init, ema,
    )  # fmt: skip
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
        if ema is not None:  # the loop put the average into the model: say that model.pt holds it
            extra["ema"] = ema.describe()
        with writing(model_path, "the final weights", kept=f"{run_dir / 'last.pt'} holds them"):
            save_detector(model, model_path, **extra)
    ddp.barrier()
    return model_path
