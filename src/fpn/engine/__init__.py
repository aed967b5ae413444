"""Training, evaluation and inference: run configs, the training loop, COCO evaluation, running a detector over
image files, multi-process helpers.

* :class:`RunConfig` / :class:`TrainConfig`: what a run trains, how, on which data (``RUN/config.yaml``);
* :func:`train`: SGD with warm-up and a step or cosine schedule, exact resume, logs, curves, DDP;
* :func:`evaluate`: pycocotools' AP/AR numbers and a per-pyramid-level table of the detections;
* :mod:`fpn.engine.inference`: a detector run over image files (``fpn detect``'s JSON).
"""

from __future__ import annotations

from fpn.engine.config import RunConfig, TrainConfig, build_run_config
from fpn.engine.evaluate import evaluate, format_metrics, format_per_level, per_level_table, predict
from fpn.engine.train import Schedule, TrainingDiverged, train

__all__ = [
    "RunConfig",
    "Schedule",
    "TrainConfig",
    "TrainingDiverged",
    "build_run_config",
    "evaluate",
    "format_metrics",
    "format_per_level",
    "per_level_table",
    "predict",
    "train",
]
