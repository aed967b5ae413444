"""``fpn.bench.peak``: the peak is the best of its kernels (never how fast any of them is)."""

from __future__ import annotations

from fpn.bench import measure_peak


def test_measure_peak_takes_the_best_kernel():
    peak = measure_peak(precision="bf16", scale=0.1, repeats=1)
    assert len(peak["kernels"]) == 6
    assert peak["gflops_per_s"] == max(peak["kernels"].values()) == peak["kernels"][peak["kernel"]]
