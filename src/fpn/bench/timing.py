"""Timing iterations: the clock, a detector's stages, repeated runs and their spread.

Stages are timed by forward hooks on the detector's parts (and a temporary wrapper around
``transform.postprocess``), i.e. around the very calls the detector's ``forward`` makes; the model is not
modified. ``transform`` is normalising, resizing and padding, ``backbone`` the bottom-up ResNet, ``pyramid``
the design's P-levels; then the detector's own stages (``model.stages()``): Faster R-CNN's ``rpn`` (anchors +
head + proposal filtering, + its losses in training) and ``roi_heads`` (RoIAlign + box head + per-class NMS,
+ losses), a one-stage detector's head and decoder; ``postprocess`` is the rescaling to the user's pixels; in
training the step times ``backward`` and ``optimizer`` (gradient norm and clipping, the update) itself
(:func:`fpn.engine.step.train_step`'s ``stage``). The stages are disjoint intervals inside one iteration, so
their sum is at most the iteration's time (the rest is Python glue).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

TRUNK_STAGES = ("transform", "backbone", "pyramid")  # every detector's; its own follow (model.stages())
FORWARD_STAGES = (*TRUNK_STAGES, "rpn", "roi_heads")  # Faster R-CNN's
STAGES = {"infer": (*FORWARD_STAGES, "postprocess"), "train": (*FORWARD_STAGES, "backward", "optimizer")}


def forward_stages(model: torch.nn.Module) -> tuple[str, ...]:
    """The stages of ``model``'s forward: the trunk's, then those its detector names (``model.stages()``)."""
    return (*TRUNK_STAGES, *model.stages())


def model_stages(model: torch.nn.Module, mode: str) -> tuple[str, ...]:
    """Every stage :class:`StageTimer` and the training step time for ``model`` in ``mode`` (infer, train)."""
    return (*forward_stages(model), *(("postprocess",) if mode == "infer" else ("backward", "optimizer")))


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read means the work before it is done (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Per-stage wall time of a detector's iterations, from hooks around the calls its ``forward`` makes.

    Use as a context manager (hooks are installed on entry and removed on exit); :meth:`reset` before each
    iteration, :attr:`totals` after it. A stage that runs several times in one iteration (the image-pyramid
    design runs the detector once per scale; micro-batches run backward once each) accumulates.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.totals: dict[str, float] = {}
        self._open: dict[str, float] = {}
        self._handles: list[Any] = []

    def reset(self) -> None:
        self.totals = {}
        self._open = {}

    def _start(self, name: str, *_: Any) -> None:
        synchronize(self.device)
        self._open[name] = time.perf_counter()

    def _stop(self, name: str, *_: Any) -> None:
        synchronize(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._open.pop(name)

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time a block as stage ``name`` (backward, optimizer)."""
        self._start(name)
        try:
            yield
        finally:
            self._stop(name)

    def __enter__(self) -> StageTimer:
        for name in forward_stages(self.model):
            module = getattr(self.model, name)
            self._handles.append(module.register_forward_pre_hook(partial(self._start, name)))
            self._handles.append(module.register_forward_hook(partial(self._stop, name)))
        transform = self.model.transform
        postprocess = transform.postprocess  # the bound method; an instance attribute shadows it until exit

        def timed_postprocess(*args: Any, **kwargs: Any) -> Any:
            with self.measure("postprocess"):
                return postprocess(*args, **kwargs)

        transform.postprocess = timed_postprocess
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        vars(self.model.transform).pop("postprocess", None)


@dataclass
class Timings:
    """Iteration times (seconds) and each iteration's stage totals."""

    times: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    peak_rates: list[float] = field(default_factory=list)  # GFLOP/s of the peak kernel right after each run
    page_faults: list[int] = field(default_factory=list)  # minor page faults of the process during each run

    def paired_fraction(self, gflops: float) -> float | None:
        """Median over runs of ``gflops / time`` over the peak measured next to that run (None without probes)."""
        if not self.peak_rates:
            return None
        return statistics.median(gflops / t / rate for t, rate in zip(self.times, self.peak_rates))

    def summary(self) -> dict[str, Any]:
        return spread(self.times)

    def stage_medians(self) -> dict[str, float]:
        """Median of each stage over the runs, in pipeline order (a stage absent from a run counts 0 there)."""
        names = list(dict.fromkeys(name for run in self.stages for name in run))  # the order they ended in
        return {name: statistics.median(run.get(name, 0.0) for run in self.stages) for name in names}


def spread(times: list[float]) -> dict[str, Any]:
    """Median, min, max, quartiles and IQR of a list of times (inclusive quartiles; 0 IQR for one run)."""
    if len(times) > 1:
        q25, _, q75 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q25 = q75 = times[0]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "q25_s": q25,
        "q75_s": q75,
        "iqr_s": q75 - q25,
        "times_s": list(times),
    }


def minor_page_faults() -> int | None:
    """The process's minor page faults so far (pages the kernel had to map in), None where unknown."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_runs(
    step: Callable[[], None],
    timer: StageTimer,
    *,
    runs: int,
    warmup: int,
    device: torch.device,
    probe: Callable[[], float] | None = None,
) -> Timings:
    """``warmup`` untimed iterations, then ``runs`` timed ones with their stage totals.

    ``probe`` (optional) returns the machine's current peak rate; it runs after each timed iteration, outside
    the timed interval.
    """
    for _ in range(warmup):
        timer.reset()
        step()
    timings = Timings()
    for _ in range(runs):
        timer.reset()
        synchronize(device)
        faults = minor_page_faults()
        start = time.perf_counter()
        step()
        synchronize(device)
        timings.times.append(time.perf_counter() - start)
        if faults is not None:
            timings.page_faults.append(minor_page_faults() - faults)
        timings.stages.append(dict(timer.totals))
        if probe is not None:
            timings.peak_rates.append(probe())
    return timings


@torch.no_grad()
def forward_latency(model: torch.nn.Module, image: torch.Tensor, *, runs: int, warmup: int) -> float:
    """Median seconds of ``runs`` eval-mode forward passes of a detector on one ``[3, H, W]`` image.

    ``warmup`` untimed passes first: they pay one-time costs (allocations, the kernels' choice of algorithm).
    """
    model.eval()
    for _ in range(warmup):
        model([image])
    times = []
    for _ in range(runs):
        synchronize(image.device)
        start = time.perf_counter()
        model([image])
        synchronize(image.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
