"""Peak memory of one step: the resident-set rise on the CPU, read in a fresh process; the allocator's on CUDA.

A memory peak on the CPU is the rise of the process's resident-set high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs``) over the resident memory just before the measured step: everything the
step touches, gradients and first-call caches included, not allocator statistics. Linux only; elsewhere the
lifetime ``ru_maxrss`` is the fallback, and the method used is returned with the value.

It is read in a fresh process (:func:`run_probe`) because a long-lived one holds freed memory that its
allocator hands back without raising the resident set, so a step there can look smaller than it is. In that
process glibc's mmap threshold is fixed at 64 KiB, so that freed tensors go back to the system rather than
into a heap a later step would reuse unseen (a warm-up's freed memory would otherwise hide part of the step).
``fpn bench`` and ``fpn compare`` both measure through this one probe.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: glibc's mmap threshold in the probe process (bytes): larger blocks are unmapped when freed.
MMAP_THRESHOLD = 64 * 1024

# The probe process: read the job, call the named function on its spec, print the result as the last line.
_CHILD = (
    "import sys; from fpn.bench.memory import _child_main; _child_main(sys.argv[1])"  # no -m: fpn.bench is a package
)


class ProbeFailed(RuntimeError):
    """The probe process exited with an error or printed no result; the message is its last stderr line."""


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


def cuda_peak_delta_mb(step: Callable[[], object], device: torch.device) -> tuple[float, str]:
    """MiB by which one call of ``step`` raises ``torch.cuda.max_memory_allocated`` (tensors only), and the method."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_memory_allocated_delta"


def run_probe(
    function: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any], *, threads: int | None = None
) -> dict[str, Any]:
    """``function(spec)`` called in a fresh Python process; returns the JSON object it returned.

    ``function`` is a module-level function of the fpn package (the process imports it by name) that builds
    what it measures from ``spec`` (JSON data) and reads the peaks with :func:`rss_peak_delta_mb`.
    ``threads`` sets ``OMP_NUM_THREADS`` and torch's intra-op threads there. Raises :class:`ProbeFailed`.
    """
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the fpn package
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    job = {"function": f"{function.__module__}:{function.__qualname__}", "threads": threads, "spec": spec}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.json"  # a file, not argv: a run config can be long
        path.write_text(json.dumps(job))
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path)], env=env, capture_output=True, text=True, check=False
        )
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    raise ProbeFailed((done.stderr.strip().splitlines() or ["no output"])[-1])


def _child_main(job_path: str) -> None:
    """The probe process: set the threads, call the job's function on its spec, print the result as JSON."""
    job = json.loads(Path(job_path).read_text())
    if job["threads"]:
        torch.set_num_threads(int(job["threads"]))
    module, _, name = job["function"].partition(":")
    print(json.dumps(getattr(importlib.import_module(module), name)(job["spec"])))
