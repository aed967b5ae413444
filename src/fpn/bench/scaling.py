"""How an iteration's time scales: against the image size, and against the number of RPN proposals.

A detector's cost has a part proportional to the pixels (backbone, pyramid, RPN head) and a part that is
not (the RoI heads, per proposal; Python glue): timing a few sizes separates them (a linear fit of time
against megapixels gives the fixed part and the time per megapixel), and timing a few proposal counts
shows what the RoI heads cost.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from fpn.bench.flops import nominal_gflops
from fpn.bench.inputs import fit_input
from fpn.bench.options import BenchOptions, format_size
from fpn.bench.prepare import Prepared, autocast_precision, make_inputs, make_step
from fpn.bench.timing import Timings, time_runs

# Image sizes as fractions of the pixels of --size (1.0 is the main measurement), and RPN proposals.
SCALING_PIXEL_FRACTIONS = (0.25, 0.5, 0.75)
SCALING_PROPOSALS = (100, 300, 1000)


def scaling(options: BenchOptions, prepared: Prepared, main: Timings, main_gflops: float) -> dict[str, Any]:
    """Time against image size (same aspect, fractions of the pixels) and against the number of proposals.

    ``main`` and ``main_gflops`` are the measurement at ``prepared.size``, reused as the largest size point.
    The model's input size and proposal count are put back afterwards.
    """
    model, device, (height, width) = prepared.model, prepared.device, prepared.size

    def measure(size: tuple[int, int]) -> tuple[Timings, float]:
        fit_input(model, *size)
        images, targets = make_inputs(options, model, size, prepared.batch, device)
        precision = autocast_precision(options)
        step = make_step(model, options.mode, precision, images, targets, prepared.timer, seed=options.seed)
        timings = time_runs(step, prepared.timer, runs=options.runs, warmup=options.warmup, device=device)
        return timings, nominal_gflops(model, step)

    # Smaller sizes are multiples of the padding stride: the network computes on the padded size, and two sizes
    # that pad to the same one would measure the same thing twice.
    stride = model.transform.size_divisible
    sizes = []
    for fraction in SCALING_PIXEL_FRACTIONS:
        size = tuple(max(stride, stride * round(side * math.sqrt(fraction) / stride)) for side in (height, width))
        if size not in sizes and size[0] * size[1] < height * width:
            sizes.append(size)
    points = []
    for size in [*sizes, (height, width)]:
        timings, gflops = (main, main_gflops) if size == (height, width) else measure(size)
        megapixels = size[0] * size[1] * prepared.batch / 1e6  # pixels of one iteration
        median = timings.summary()["median_s"]
        points.append(
            {
                "size": format_size(size),
                "megapixels": megapixels,
                "median_s": median,
                "s_per_megapixel": median / megapixels,
                "gflops": gflops,
                "gflops_per_megapixel": gflops / megapixels,
            }
        )
    fit_input(model, height, width)
    result: dict[str, Any] = {"sizes": points, "size_fit": linear_fit(points)}
    if not hasattr(model, "rpn"):
        return result  # a one-stage detector: no proposals to count

    key = "post_nms_top_n_test" if options.mode == "infer" else "post_nms_top_n_train"
    rpn_config = model.config.rpn
    original = getattr(rpn_config, key)
    proposals = []
    try:
        for n in SCALING_PROPOSALS:
            setattr(rpn_config, key, n)
            timings, gflops = measure((height, width))
            stages = timings.stage_medians()
            proposals.append(
                {
                    "post_nms_top_n": n,
                    "median_s": timings.summary()["median_s"],
                    "rpn_s": stages.get("rpn"),
                    "roi_heads_s": stages.get("roi_heads"),
                    "gflops": gflops,
                }
            )
    finally:
        setattr(rpn_config, key, original)
    return {**result, "proposals": proposals, "proposals_key": f"rpn.{key}"}


def linear_fit(points: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares ``time = fixed_s + s_per_megapixel * megapixels`` over the size points."""
    xs = [p["megapixels"] for p in points]
    ys = [p["median_s"] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    return {"fixed_s": mean_y - slope * mean_x, "s_per_megapixel": slope}
