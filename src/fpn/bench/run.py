"""``fpn bench``'s measurement: :func:`run_bench` times one iteration repeatedly and returns the record.

It builds a detector (a preset with seeded random weights, or a checkpoint), fixes its input size so that
the network sees exactly ``size`` pixels, and times one iteration (:mod:`fpn.bench.prepare`) ``runs``
times after ``warmup`` untimed ones. Reported: the median and spread (min, max, IQR) of the iteration
times, images per second, the median time of each stage (:mod:`fpn.bench.timing`), the GFLOPs of one
iteration and the achieved GFLOP/s set against this machine's measured peak, the peak memory, and
optionally how the time scales with the image size and the number of proposals (:mod:`fpn.bench.scaling`).

``gflops`` is what the model's layers are worth as direct convolutions, ``executed_gflops`` what ran
(:mod:`fpn.bench.flops`). The peak is the best rate of a few dense kernels at the same thread count
(:mod:`fpn.bench.peak`), so ``fraction_of_peak`` (``gflops`` over time, the *effective* rate, over the
peak) says how the detector compares with running all of its layers at the machine's best
convolution/GEMM rate; above 1 is possible only through fewer multiplications.
``executed_fraction_of_peak`` is the arithmetic actually done over the peak.

Where the machine's speed drifts, the best kernel is also timed right after every timed iteration
(``peak_during_runs_gflops_per_s``), and ``paired_fraction_of_peak`` is the median over iterations of that
iteration's effective rate over the peak measured next to it; ``executed_`` likewise.

With ``layers``, every dense call of one iteration is also timed alone (:mod:`fpn.bench.layer_ceiling`): the
sum is what the iteration would take if nothing else cost time, and its ``ceiling_fraction_of_peak`` the
highest ``fraction_of_peak`` the model could show here.

Peak memory, on the CPU, is measured in a fresh subprocess that builds the same model and inputs and runs
one iteration (:mod:`fpn.bench.memory`): it counts everything the iteration adds: activations, gradients and
momentum buffers, one-off caches of the kernels. On CUDA it is the growth of
``torch.cuda.max_memory_allocated`` over one iteration (tensors only).

Timings depend on everything else the machine is doing: compare numbers within one run on one machine.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict
from functools import partial
from typing import Any

import torch

from fpn.bench.flops import count_gflops, nominal_gflops
from fpn.bench.machine import machine_info
from fpn.bench.memory import ProbeFailed, cuda_peak_delta_mb, rss_peak_delta_mb, run_probe
from fpn.bench.options import BenchOptions, format_size
from fpn.bench.peak import measure_peak, peak_probe
from fpn.bench.prepare import Prepared, prepare
from fpn.bench.scaling import scaling
from fpn.bench.timing import synchronize, time_runs
from fpn.device import resolve_device

logger = logging.getLogger(__name__)


def memory_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """The memory subprocess (:func:`~fpn.bench.memory.run_probe`): the first iteration's peak, on the CPU."""
    spec["size"] = tuple(spec["size"]) if spec["size"] else None
    prepared = prepare(BenchOptions(**spec), torch.device("cpu"))
    peak_mb, method = rss_peak_delta_mb(prepared.step)
    return {"peak_mb": peak_mb, "method": method}


def peak_memory(options: BenchOptions, prepared: Prepared) -> tuple[float | None, str]:
    """Peak memory (MB) of one iteration and the method (see the module's docstring)."""
    if prepared.device.type == "cuda":
        return cuda_peak_delta_mb(prepared.step, prepared.device)
    spec = asdict(options)
    spec.update(device="cpu", size=list(prepared.size), scaling=False, memory=False)
    try:
        answer = run_probe(memory_probe, spec, threads=options.threads)
    except ProbeFailed as error:
        logger.warning("peak memory not measured: the probe process failed (%s)", error)
        return None, f"failed: {str(error)[:200]}"
    return answer["peak_mb"], answer["method"]


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Measure as ``options`` say and return the record that ``fpn bench`` writes as JSON (see the CLI)."""
    options.validate()
    device = resolve_device(options.device)
    previous = torch.get_num_threads()
    threads = options.threads or previous
    torch.set_num_threads(threads)
    try:
        return _run(options, device, threads)
    finally:
        torch.set_num_threads(previous)


def _run(options: BenchOptions, device: torch.device, threads: int) -> dict[str, Any]:
    load_before = machine_info(device).get("load_average_1m")
    prepared = prepare(options, device)
    logger.info(
        "bench %s: %s, %s, %d image(s) of %s, %d thread(s), %s",
        prepared.name, options.mode, options.precision, prepared.batch, format_size(prepared.size), threads, device,
    )  # fmt: skip
    if options.peak_gflops is not None:
        peak = {"gflops_per_s": float(options.peak_gflops), "kernel": "given", "kernels": {}}
        probe = None
    else:
        peak = measure_peak(precision=options.precision, device=device, scale=options.peak_scale)
        probe = peak_probe(peak["kernel"], precision=options.precision, device=device, scale=options.peak_scale)
    with prepared.timer:
        timings = time_runs(
            prepared.step, prepared.timer, runs=options.runs, warmup=options.warmup, device=device, probe=probe
        )
        executed_gflops = count_gflops(prepared.step)
        gflops = nominal_gflops(prepared.model, prepared.step)
        scaled = scaling(options, prepared, timings, gflops) if options.scaling else None
        layers = None
        if options.layers:
            # Imported here only: it rests on private torch APIs (see the module), which must not break the rest.
            from fpn.bench.layer_ceiling import layer_ceiling

            layers = layer_ceiling(
                prepared.step,
                iteration_s=timings.summary()["median_s"],
                nominal_gflops=gflops,
                peak_gflops_per_s=peak["gflops_per_s"],
                paired_fraction_of_peak=timings.paired_fraction(gflops),
                synchronize=partial(synchronize, device),
            )
    peak_mb, memory_method = peak_memory(options, prepared) if options.memory else (None, "not measured")

    summary = timings.summary()
    median = summary["median_s"]
    machine = machine_info(device)
    machine["load_average_1m_before"] = load_before
    result: dict[str, Any] = {
        "model": prepared.name,
        "design": prepared.model.config.pyramid.design,
        "weights": options.weights,
        "params": sum(p.numel() for p in prepared.model.parameters()),
        "mode": options.mode,
        "precision": options.precision,
        "optimized": options.mode == "infer" and not options.exact,
        "device": str(device),
        "size": format_size(prepared.size),
        "batch": prepared.batch,
        "threads": threads,
        "runs": options.runs,
        "warmup": options.warmup,
        **summary,
        "s_per_image": median / prepared.batch,
        "images_per_s": prepared.batch / median,
        "stages": timings.stage_medians(),
        "gflops": gflops,
        "gflops_per_s": gflops / median,
        "peak_gflops_per_s": peak["gflops_per_s"],
        "peak_kernel": peak["kernel"],
        "peak_kernels": peak["kernels"],
        "fraction_of_peak": gflops / median / peak["gflops_per_s"],
        "executed_gflops": executed_gflops,
        "executed_gflops_per_s": executed_gflops / median,
        "executed_fraction_of_peak": executed_gflops / median / peak["gflops_per_s"],
        "peak_during_runs_gflops_per_s": timings.peak_rates,
        "paired_fraction_of_peak": timings.paired_fraction(gflops),
        "executed_paired_fraction_of_peak": timings.paired_fraction(executed_gflops),
        "peak_mb": peak_mb,
        "peak_mb_method": memory_method,
        "page_faults_per_iteration": statistics.median(timings.page_faults) if timings.page_faults else None,
        "machine": machine,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if scaled is not None:
        result["scaling"] = scaled
    if layers is not None:
        result["layers"] = layers
    return result
