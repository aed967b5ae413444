"""What a measurement ran on: the CPU, the GPU if used, threads, load and software versions, for the record.

Timings mean little without it: the same model runs at very different speeds on another CPU, with another
thread count, or while the machine is busy (hence the load average).
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch


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
