"""``fpn bench --weights model.onnx``: the exported file's latency in onnxruntime, on the bench's inputs.

The file holds the whole detector (pre- and post-processing included), so one iteration is one
``session.run`` over ``batch`` synthetic images of the bench's size (:func:`fpn.bench.inputs.synthetic_images`,
the same as the PyTorch path's), through :class:`fpn.export.runtime.OnnxDetector` with ``threads`` intra-op
threads. The PyTorch-only instruments have no meaning here and are refused in one line: training, bf16
(fixed at export), stage timing, FLOP counts, the peak-kernel rate, the memory probe, the scaling sweeps.
"""

from __future__ import annotations

import time
from typing import Any

from fpn.bench.inputs import eval_size, synthetic_images
from fpn.bench.machine import machine_info
from fpn.bench.options import BenchOptions
from fpn.bench.timing import spread
from fpn.errors import ConfigError
from fpn.export.runtime import OnnxDetector


def refuse_torch_only(options: BenchOptions) -> None:
    """A one-line error for any option that only a PyTorch model can measure."""
    asked = [
        name
        for name, on in (
            ("--mode train", options.mode != "infer"),
            ("--precision bf16", options.precision != "fp32"),
            ("--scaling", options.scaling),
            ("--layers", options.layers),
            ("--device cuda", options.device not in ("auto", "cpu")),
        )
        if on
    ]
    if asked:
        raise ConfigError(
            f"{options.weights}: an ONNX file is timed for inference in onnxruntime only ({', '.join(asked)})"
        )


def run_onnx_bench(options: BenchOptions) -> dict[str, Any]:
    """Time the ONNX file ``options.weights`` and return ``fpn bench``'s record (its ONNX subset)."""
    refuse_torch_only(options)
    threads = options.threads or None
    model = OnnxDetector(options.weights, threads=threads)
    height, width = options.size or model.size or eval_size(model.config)
    images = synthetic_images(options.batch, height, width, seed=options.seed)
    load_before = machine_info().get("load_average_1m")
    for _ in range(options.warmup):
        model(images)
    times = []
    for _ in range(options.runs):
        start = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - start)
    stats = spread(times)
    return {
        "model": str(options.weights),
        "runtime": "onnxruntime",
        "design": model.config.pyramid.design,
        "detector": model.config.detector,
        "mode": "infer",
        "precision": "fp32",
        "batch": options.batch,
        "size": f"{height}x{width}",
        "threads": threads,
        "device": "cpu",
        "runs": options.runs,
        **stats,
        "images_per_s": options.batch / stats["median_s"],
        "machine": machine_info(threads=threads) | {"load_average_1m_before": load_before},
    }


def report_onnx(result: dict) -> str:
    """The record as two readable lines."""
    return (
        f"{result['model']} ({result['detector']}, {result['design']}) in onnxruntime, {result['batch']} image(s) of "
        f"{result['size']}, {result['threads'] or 'default'} thread(s) ({result['machine']['cpu']})\n"
        f"  iteration  median {result['median_s']:.4f} s (min {result['min_s']:.4f}, max {result['max_s']:.4f}, "
        f"IQR {result['iqr_s']:.4f}, {result['runs']} runs)   {result['images_per_s']:.2f} images/s"
    )
