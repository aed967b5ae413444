"""Measuring a model: FLOPs, resident-memory peaks, the machine. Shared by ``fpn models``, ``bench`` and ``compare``.

* FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add, on the ops that
  actually ran (so a detector's count depends on how many proposals survived).
* A memory peak is the rise of this process's resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the resident memory just before the measured step: everything the step
  touches, gradients and first-call caches included, not allocator statistics. Linux only; elsewhere the
  lifetime ``ru_maxrss`` is the fallback, and the method used is returned with the value.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from fpn.config import ModelConfig


def eval_size(config: ModelConfig) -> tuple[int, int]:
    """(height, width) of a preset's test image: shorter side ``min_size[-1]``, 4:3, longer side capped."""
    shorter = config.transform.min_size[-1]
    return shorter, min(round(shorter * 4 / 3), config.transform.max_size)


def count_gflops(step: Callable[[], object]) -> float:
    """GFLOPs of one call of ``step`` (backward included if it runs one)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 1e9


def forward_gflops(model: torch.nn.Module, image: torch.Tensor) -> float:
    """GFLOPs of one eval-mode, no-grad forward pass of a detector on one ``[3, H, W]`` image."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count_gflops(lambda: model([image]))
    finally:
        model.train(was_training)


def _status_kb(field_name: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), or None where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_peak_delta_mb(step: Callable[[], object]) -> tuple[float | None, str]:
    """MiB by which one call of ``step`` raises the resident-set high-water mark, and how it was read."""
    gc.collect()
    before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    step()
    if before is not None and reset:
        peak = _status_kb("VmHWM")
        if peak is not None:
            return max(0, peak - before) / 1024, "rss_hwm_delta"
    import resource  # POSIX only; ru_maxrss is the process's lifetime peak, which can predate the step

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    maxrss_kb = maxrss / 1024 if sys.platform == "darwin" else maxrss
    return (max(0.0, maxrss_kb - (before or 0)) / 1024, "ru_maxrss_delta") if before is not None else (None, "none")


def machine_info(device: torch.device | None = None, threads: int | None = None) -> dict[str, Any]:
    """The CPU (model, cores), the GPU if used, the thread count and the software versions, for the record."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_1m"] = os.getloadavg()[0]  # a busy machine makes every timing slower
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
