"""Latency of several detectors measured in alternating rounds, so that the machine's drift falls on all alike.

Timing one design's passes after another's lets whatever else the machine does in that minute (another
process, a clock change, a cache filled by the previous model) land on one design only: two designs of equal
GFLOPs have differed by a third from that alone. Here every design is warmed up first, then each round times
one forward pass of every design, the order rotated from round to round (so none is always first after
another), and a design's latency is the median over the rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

import torch

from fpn.bench.timing import forward_latency


def latency_rounds(
    models: Mapping[str, torch.nn.Module], image: torch.Tensor, *, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of one eval-mode forward pass of each model on ``image``, per round (module docstring)."""
    names = list(models)
    for name in names:
        forward_latency(models[name], image, runs=1, warmup=warmup)  # warm-up; the timed pass is discarded
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(forward_latency(models[name], image, runs=1, warmup=0))
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """Each design's median over the rounds."""
    return {name: statistics.median(values) for name, values in times.items()}
