"""The machine's peak rate: the best GFLOP/s of a few dense kernels at the current thread count.

The peak is what a detector's rate is set against (``fraction_of_peak``): its layers are GEMMs and
convolutions, so the best this machine does on a large GEMM or a wide 3x3 convolution is the rate they could
reach. Where the machine's speed drifts (shared hosts: the same kernel can run several times faster one
minute than the next), a peak measured once says little about the moment of each run, so
:func:`peak_probe` times the best kernel again, for pairing with each timed iteration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from fpn.bench.timing import synchronize

# The peak kernels at scale 1: a square GEMM, and the 3x3 256->256 convolution that smooths P2 at 800x1088.
PEAK_GEMM = 2048
PEAK_CONV_MAP = (200, 272)
PEAK_CONV_CHANNELS = 256


def peak_kernels(
    precision: str, device: torch.device, scale: float = 1.0
) -> list[tuple[str, float, Callable[[], Any]]]:
    """``(name, flops, run)`` of the dense kernels the peak is taken over.

    A square GEMM and a 3x3 256->256 convolution on a 200x272 map (FPN's P2 smoothing at 800x1088) in NCHW
    and channels-last layout, in fp32, plus the same in bfloat16 when ``precision`` is bf16. ``scale``
    shrinks the GEMM side and the map's sides (for quick tests).
    """
    n = max(64, round(PEAK_GEMM * scale / 64) * 64)
    h, w = (max(8, round(side * scale)) for side in PEAK_CONV_MAP)
    c = PEAK_CONV_CHANNELS
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if precision == "bf16" else [])
    generator = torch.Generator().manual_seed(0)
    kernels = []
    for label, dtype in dtypes:
        a, b = (torch.randn(n, n, generator=generator).to(device, dtype) for _ in range(2))
        kernels.append((f"gemm {n}x{n}x{n} {label}", 2.0 * n**3, partial(torch.mm, a, b)))
        x = torch.randn(1, c, h, w, generator=generator).to(device, dtype)
        weight = (torch.randn(c, c, 3, 3, generator=generator) * 0.02).to(device, dtype)
        conv_flops = 2.0 * c * c * 9 * h * w
        kernels.append((f"conv3x3 {c}->{c} {h}x{w} nchw {label}", conv_flops, partial(F.conv2d, x, weight, padding=1)))
        x_cl, weight_cl = (t.to(memory_format=torch.channels_last) for t in (x, weight))
        name = f"conv3x3 {c}->{c} {h}x{w} channels-last {label}"
        kernels.append((name, conv_flops, partial(F.conv2d, x_cl, weight_cl, padding=1)))
    return kernels


def measure_peak(
    *, precision: str = "fp32", device: torch.device | None = None, scale: float = 1.0, repeats: int = 3
) -> dict[str, Any]:
    """The best GFLOP/s of :func:`peak_kernels` at the current thread count (best of ``repeats`` per kernel).

    Returns ``{"gflops_per_s": best rate, "kernel": its name, "kernels": {name: rate}}``.
    """
    device = device or torch.device("cpu")
    rates: dict[str, float] = {}
    with torch.inference_mode():
        for name, flops, run in peak_kernels(precision, device, scale):
            run()  # warm-up: allocations and the library's choice of algorithm
            rates[name] = _best_rate(run, flops, repeats, device)
    best_name = max(rates, key=rates.__getitem__)
    return {"gflops_per_s": rates[best_name], "kernel": best_name, "kernels": rates}


def _best_rate(run: Callable[[], Any], flops: float, repeats: int, device: torch.device) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls of ``run``."""
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return flops / max(best, 1e-9) / 1e9


def peak_probe(
    kernel: str, *, precision: str, device: torch.device, scale: float = 1.0, repeats: int = 2
) -> Callable[[], float]:
    """A function returning the current GFLOP/s of the peak kernel named ``kernel`` (best of ``repeats``)."""
    flops, run = next((f, r) for name, f, r in peak_kernels(precision, device, scale) if name == kernel)

    def probe() -> float:
        with torch.inference_mode():
            return _best_rate(run, flops, repeats, device)

    return probe
