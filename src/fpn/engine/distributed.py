"""Several processes, one run: ``torchrun`` environment, collective helpers, data order
(the device a process takes: :func:`fpn.device.resolve_device`).

A run launched by ``torchrun --nproc_per_node N -m fpn train ...`` reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` from the environment and joins a process group (gloo on the CPU, NCCL on CUDA). Without them
everything here degrades to a single process and no collective is called.

The data order is a pure function of ``(seed, iteration)``: :class:`ShardedBatchSampler` draws each epoch's
permutation from a generator seeded with ``seed + epoch``, cuts it into global batches of
``batch_size * world_size`` and gives rank ``r`` its slice ``[r * batch_size, (r + 1) * batch_size)``. It
also hands out, with every image, a *key* derived from ``(seed, iteration, slot in the global batch)`` that
seeds the image's flip and the detector's anchor/RoI sampling. So a resumed run sees the same batches and
the same random draws, and a run split over N processes sees the same images and draws as one process with
the whole global batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from fpn.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank, world size and local rank from ``torchrun``'s environment variables (1 process without them)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as exc:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK environment variables are not integers ({exc})") from None


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group of a ``torchrun`` launch (no-op for a single process or when already joined)."""
    if not info.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    logger.debug("rank %d of %d joined the process group (%s)", info.rank, info.world_size, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place (identity for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# ------------------------------------------------------------------------------------------- data order


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence hashing); the same parts give the same seed."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@dataclass(frozen=True)
class ImageSlot:
    """One image of a batch: its index in the dataset and the key seeding its random draws."""

    index: int
    key: int


class ShardedBatchSampler:
    """Deterministic, shardable, resumable batches; an infinite iterator of lists of :class:`ImageSlot`.

    Iteration ``i`` (0-based) is batch ``i % per_epoch`` of epoch ``i // per_epoch``. An epoch holds
    ``len(dataset) // global_batch`` global batches; the permutation's leftover tail is skipped (the next
    epoch's permutation reaches those images). A dataset smaller than one global batch is repeated.
    """

    def __init__(
        self, num_items: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if num_items < 1:
            raise ConfigError("the training set is empty")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.iteration = start  # the next iteration to hand out
        self.global_batch = batch_size * world_size
        self.per_epoch = max(1, num_items // self.global_batch)
        self._epoch_cache: tuple[int, list[int]] | None = None

    def epoch_order(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s permutation of the dataset (repeated to fill one global batch if too short)."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
            while len(order) < self.global_batch:
                order += order[: self.global_batch - len(order)]
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def batch(self, iteration: int) -> list[ImageSlot]:
        """This rank's share of global batch ``iteration``."""
        epoch, position = divmod(iteration, self.per_epoch)
        order = self.epoch_order(epoch)
        start = position * self.global_batch + self.rank * self.batch_size
        slots = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return [
            ImageSlot(index, derive_seed(self.seed, iteration, slot))
            for index, slot in zip(order[start : start + self.batch_size], slots)
        ]

    def epoch_of(self, iteration: int) -> float:
        """Fractional epoch reached after ``iteration`` iterations."""
        return iteration / self.per_epoch

    def __iter__(self) -> Iterator[list[ImageSlot]]:
        while True:
            batch = self.batch(self.iteration)
            self.iteration += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Everything the order depends on; iteration is the next one to hand out."""
        return {
            "seed": self.seed,
            "iteration": self.iteration,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_items": self.num_items,
        }
