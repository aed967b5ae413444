"""The instruments: how fast a detector runs, what it computes, how much memory it takes (``fpn bench``).

They sit apart from the model and measure it from outside (hooks, a FLOP counter, a fresh process), so the
model is never changed to be measured; what they time in training is the training loop's own step
(:func:`fpn.engine.step.train_step`).

* :mod:`~fpn.bench.run`: :func:`run_bench`, the measurement ``fpn bench`` makes, and its record;
* :mod:`~fpn.bench.options`: :class:`BenchOptions`, what to measure;
* :mod:`~fpn.bench.prepare`: the model at its input size, its inputs and the iteration to time;
* :mod:`~fpn.bench.inputs`: the test size, a resize that keeps a size, synthetic images and targets;
* :mod:`~fpn.bench.timing`: the clock, per-stage timers, repeated runs and their spread;
* :mod:`~fpn.bench.peak`: the machine's peak rate on a few dense kernels, and a probe to pair with each run;
* :mod:`~fpn.bench.flops`: executed and nominal GFLOPs;
* :mod:`~fpn.bench.memory`: the peak-memory reading and the one fresh-process probe (bench and compare);
* :mod:`~fpn.bench.scaling`: time against image size and against the number of proposals;
* :mod:`~fpn.bench.machine`: what the measurement ran on;
* :mod:`~fpn.bench.layer_ceiling`: every dense call timed alone (private torch APIs: imported only when asked).

Example::

    from fpn.bench import BenchOptions, run_bench

    record = run_bench(BenchOptions(model="tiny-fpn", size=(256, 320), runs=3, memory=False))
    print(record["median_s"], record["fraction_of_peak"])
"""

from __future__ import annotations

from fpn.bench.flops import count_gflops, forward_gflops, nominal_gflops
from fpn.bench.inputs import eval_size, fit_input, synthetic_images, synthetic_targets
from fpn.bench.machine import machine_info
from fpn.bench.memory import ProbeFailed, rss_peak_delta_mb, run_probe
from fpn.bench.options import MODES, PRECISIONS, BenchOptions, format_size, parse_size
from fpn.bench.peak import measure_peak, peak_probe
from fpn.bench.prepare import Prepared, prepare
from fpn.bench.run import run_bench
from fpn.bench.scaling import linear_fit
from fpn.bench.timing import (
    FORWARD_STAGES,
    STAGES,
    TRUNK_STAGES,
    StageTimer,
    Timings,
    forward_stages,
    model_stages,
    spread,
    synchronize,
    time_runs,
)

__all__ = [
    "FORWARD_STAGES",
    "MODES",
    "PRECISIONS",
    "STAGES",
    "TRUNK_STAGES",
    "BenchOptions",
    "Prepared",
    "ProbeFailed",
    "StageTimer",
    "Timings",
    "count_gflops",
    "eval_size",
    "fit_input",
    "format_size",
    "forward_gflops",
    "forward_stages",
    "linear_fit",
    "machine_info",
    "measure_peak",
    "model_stages",
    "nominal_gflops",
    "parse_size",
    "peak_probe",
    "prepare",
    "rss_peak_delta_mb",
    "run_bench",
    "run_probe",
    "spread",
    "synchronize",
    "synthetic_images",
    "synthetic_targets",
    "time_runs",
]
