"""The memory subprocess of a comparison: one inference pass and one training step of a trained design.

:func:`fpn.compare.measure_memory` runs :func:`memory_probe` in a fresh Python process
(:func:`fpn.bench.memory.run_probe`, which imports it by name), so that ``train_peak_mb`` and
``infer_peak_mb`` are read where nothing else has run (:mod:`fpn.compare`'s docstring says what they are).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fpn.bench import rss_peak_delta_mb
from fpn.data import load_dataset
from fpn.detection import load_detector
from fpn.engine.config import RunConfig
from fpn.engine.step import train_step
from fpn.engine.train import amp_dtype


def _peak_mib(step: Callable[[], object]) -> float:
    """Resident-memory rise of one call of ``step`` (MiB; see :mod:`fpn.bench.memory`)."""
    value, _ = rss_peak_delta_mb(step)
    if value is None:
        raise RuntimeError("no /proc/self/status to read the resident-memory peak from")
    return round(value, 2)


def memory_probe(spec: dict[str, Any]) -> dict[str, float]:
    """The memory subprocess (:func:`fpn.bench.memory.run_probe`): one inference pass, then one training step.

    The step is the training loop's (:func:`fpn.engine.step.train_step`) on the model as ``fpn train`` sets
    it up (channels-last, Winograd, autocast as the run config says), at the largest training scale.
    """
    config = RunConfig.from_dict(spec["run_config"])
    cfg = config.train
    model, _ = load_detector(spec["model"])
    image = load_dataset(config.data, "val")[0][0]
    train_set = load_dataset(config.data, "train")
    items = [train_set[i] for i in range(min(cfg.batch_size, len(train_set)))]
    images, targets = [item[0] for item in items], [item[1] for item in items]

    def infer() -> object:
        with torch.no_grad():
            return model([image])

    model.eval()
    infer()
    infer_peak = _peak_mib(infer)

    model.train()
    model.transform.generator = torch.Generator().manual_seed(cfg.seed)
    model.transform.min_size = [max(config.model.transform.min_size)]  # the worst case of multi-scale training
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.channels_last:
        model.use_channels_last()
    if cfg.winograd:
        model.use_winograd()
    amp = amp_dtype(torch.device("cpu")) if cfg.amp else None

    def step() -> None:
        train_step(
            model, optimizer, images, targets, micro_batch=cfg.micro_batch, amp_dtype=amp, grad_clip=cfg.grad_clip,
            seed=lambda chunk: torch.manual_seed(cfg.seed),  # the same anchor and RoI samples for every design
        )  # fmt: skip

    step()  # also creates the momentum buffers, which then count as baseline; the gradients are the step's
    return {"train_peak_mb": _peak_mib(step), "infer_peak_mb": infer_peak}
