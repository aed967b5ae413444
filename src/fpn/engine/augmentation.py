"""The training images' augmentation, as the run config sets it, and when mosaic is on.

:class:`Augment` turns a training item into what a step sees: a mosaic of four (with probability
``train.mosaic``, while mosaic is open), then scale and translation jitter (``train.scale_jitter``,
``train.translate``), then HSV colour jitter (``train.hsv``); the horizontal flip follows in the loop's
:class:`~fpn.engine.loop.KeyedDataset`, as before. Every part draws from its own generator, seeded from the
image's slot key ``(seed, iteration, slot)``: a resumed run repeats every draw, and switching one part on
leaves the others' draws (and the flips) as they were, so an ablation changes one thing.

Mosaic closes for the last ``train.close_mosaic`` of the run (as YOLO's ``close_mosaic``), where the model
sees whole images as at test time. :func:`mosaic_open` decides per batch from the run's progress, the one the
learning-rate schedule follows (:class:`~fpn.engine.schedule.Plan`): iterations, or time with a ``--minutes``
budget. Progress is restored on resume, so a resumed run closes mosaic at the same point.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fpn.data.augment import RandomAffine
from fpn.data.hsv import RandomHSV
from fpn.data.mosaic import RandomMosaic
from fpn.engine.config import TrainConfig
from fpn.engine.distributed import ImageSlot, ShardedBatchSampler, derive_seed
from fpn.engine.schedule import Plan

#: ``(index, key) -> (image, target)``: one item alone (its tile, in a tiled run), its draws from ``key``.
Load = Callable[[int, int], tuple[torch.Tensor, dict[str, Any]]]
# Streams of derive_seed(key, stream): 0 flip, 1-2 the forward pass, 3 the tile (fpn.engine.loop); these here.
MOSAIC, AFFINE, HSV, MOSAIC_PARTS = 4, 5, 6, 7


def _generator(key: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(key, stream))


class Augment:
    """Mosaic, scale/translation and colour jitter of one training item (module docstring)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.mosaic, self.min_visible = cfg.mosaic, cfg.augment_min_visible
        self.scale, self.translate, self.hsv = cfg.scale_jitter, cfg.translate, list(cfg.hsv)

    @property
    def active(self) -> bool:
        return bool(self.mosaic or self.scale or self.translate or any(self.hsv))

    def __call__(
        self, load: Load, slot: ImageSlot, num_items: int, *, mosaic: bool
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if mosaic and self.mosaic > 0:
            parts = itertools.count()

            def load_part(index: int) -> tuple[torch.Tensor, dict[str, Any]]:
                n = next(parts)  # the item itself draws as it would alone; the other three their own
                return load(index, slot.key if n == 0 else derive_seed(slot.key, MOSAIC_PARTS, n))

            draw = RandomMosaic(self.mosaic, self.min_visible, _generator(slot.key, MOSAIC))
            image, target = draw(load_part, slot.index, num_items)
        else:
            image, target = load(slot.index, slot.key)
        if self.scale or self.translate:
            affine = RandomAffine(self.scale, self.translate, self.min_visible, _generator(slot.key, AFFINE))
            image, target = affine(image, target)
        if any(self.hsv):
            image, target = RandomHSV(self.hsv, _generator(slot.key, HSV))(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"Augment(mosaic={self.mosaic}, scale={self.scale}, translate={self.translate}, hsv={self.hsv}, "
            f"min_visible={self.min_visible})"
        )


def mosaic_open(cfg: TrainConfig, plan: Plan, iteration: int, elapsed: float) -> bool:
    """Whether mosaic is on at ``iteration`` (``elapsed`` seconds in): before the last ``close_mosaic`` of the run."""
    return cfg.mosaic > 0 and plan.progress(iteration, elapsed) < 1.0 - cfg.close_mosaic


class PhasedBatches:
    """The sampler's batches with each slot paired with whether mosaic is open at its batch's iteration.

    Iterated in the main process (the DataLoader's workers get the pairs), a few batches ahead of the steps:
    with a time budget the switch lands within that many iterations of the exact time.
    """

    def __init__(self, sampler: ShardedBatchSampler, is_open: Callable[[int], bool]) -> None:
        self.sampler, self.is_open = sampler, is_open

    def __iter__(self) -> Iterator[list[tuple[ImageSlot, bool]]]:
        for batch in self.sampler:
            on = self.is_open(self.sampler.iteration - 1)  # the sampler has moved past this batch
            yield [(slot, on) for slot in batch]
