"""``fpn.bench.memory``: resident-memory peaks, read in a fresh process through the one probe runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpn.bench.memory import ProbeFailed, run_probe
from fpn.bench.run import memory_probe


def test_rss_peak_delta_sees_an_allocation():
    # In a fresh process, as bench and compare use it: a long-lived test worker may hold freed memory that
    # the allocator hands back without raising the resident set.
    code = (
        "import torch; from fpn.bench.memory import rss_peak_delta_mb\n"
        "def allocate():\n    block = torch.ones(64 * 2**20 // 4)  # 64 MB, every page touched\n    del block\n"
        "print(*rss_peak_delta_mb(allocate))"
    )
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    peak_mb, method = out.split()
    assert method in ("rss_hwm_delta", "ru_maxrss_delta")
    if method == "rss_hwm_delta":
        assert float(peak_mb) >= 50


def test_the_probe_runs_a_function_of_the_package_in_a_fresh_process():
    spec = {"model": "micro-fpn", "size": [64, 64], "runs": 1, "warmup": 0, "device": "cpu", "memory": False}
    answer = run_probe(memory_probe, spec, threads=1)
    assert answer["method"] in ("rss_hwm_delta", "ru_maxrss_delta") and answer["peak_mb"] > 0


def test_a_failed_probe_is_one_error_naming_the_cause():
    spec = {"model": "no-such-preset", "size": [64, 64], "device": "cpu", "memory": False}
    with pytest.raises(ProbeFailed, match="ConfigError: unknown model preset 'no-such-preset'"):
        run_probe(memory_probe, spec, threads=1)
