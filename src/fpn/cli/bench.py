"""``fpn bench``: how fast a detector runs here, per stage, against the machine's peak, and its peak memory.

After --warmup untimed iterations, --runs timed ones: an iteration is one forward pass over --batch images
(--mode infer) or one training step (forward, backward, SGD step with synthetic targets; --mode train). The
network sees exactly --size pixels (its resize is set to keep that size). Prints a summary and writes
--output (JSON):

  median_s, min_s, max_s, q25_s, q75_s, iqr_s, times_s   one iteration, end to end (seconds)
  s_per_image, images_per_s                               batch / median_s
  stages {name: median_s}                                 transform, backbone, pyramid, rpn, roi_heads, then
                                                          postprocess (infer) or backward, optimizer (train)
  gflops, gflops_per_s                                    FlopCounterMode count of one iteration (layers as
                                                          direct convolutions), / median_s: the effective rate
  executed_gflops, executed_gflops_per_s                  the same for what ran (Winograd: fewer multiplications)
  peak_gflops_per_s, peak_kernel, peak_kernels            best of a GEMM and 3x3 convolutions, same threads
  fraction_of_peak, executed_fraction_of_peak             gflops_per_s (executed_...) / peak_gflops_per_s
  peak_during_runs_gflops_per_s                           the peak kernel timed right after each iteration
  paired_fraction_of_peak, executed_paired_fraction_...   median over iterations of its rate / the peak next
                                                          to it (for machines whose speed drifts)
  peak_mb, peak_mb_method                                 memory one iteration adds (RSS high-water mark in
                                                          a fresh process on the CPU; CUDA allocator on GPU)
  page_faults_per_iteration                               median minor page faults of the process per timed
                                                          iteration (fresh pages mapped in; None where unknown)
  size, batch, threads, precision, mode, device, model, design, params, machine, date, command
  scaling (with --scaling)                                time against image size (time per megapixel and a
                                                          linear fit) and against rpn.post_nms_top_n
  layers (with --layers)                                  every convolution / matrix product of one iteration
                                                          (backward too) timed alone: seconds, share_of_iteration,
                                                          gflops_per_s, fraction_of_peak, ceiling_fraction_of_peak
                                                          (the best fraction_of_peak this model can reach here:
                                                          its GFLOPs over the layers' time alone), paired_ceiling_...
                                                          (the paired fraction / share_of_iteration), slowest calls

Timings depend on what else the machine does: compare them only within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import shlex

from fpn.bench import MODES, PRECISIONS, BenchOptions, parse_size, run_bench
from fpn.config import DESIGNS
from fpn.export.runtime import is_onnx
from fpn.io import atomic_write_text, check_writable
from fpn.presets import PRESETS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time a detector: per stage, GFLOP/s against the peak, memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default="r50-fpn", help=f"preset: {', '.join(PRESETS)} (default: %(default)s)")
    which.add_argument(
        "--weights",
        help="checkpoint to time instead: RUN/model.pt, a torchvision .pth, or an exported model.onnx (onnxruntime)",
    )
    p.add_argument("--design", choices=DESIGNS, help="pyramid design for the preset (default: the preset's)")
    p.add_argument("--size", help="HEIGHTxWIDTH the network sees, e.g. 800x1216 (default: the model's test size)")
    p.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's current setting)")
    p.add_argument("--mode", choices=MODES, default="infer", help="forward pass or training step (default: infer)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: bfloat16 weights for optimized inference, autocast for --exact and training (default: fp32)",
    )
    p.add_argument("--exact", action="store_true", help="time the model as loaded: no BN folding (infer), NCHW (train)")
    p.add_argument("--batch", type=int, help="images per iteration (default: 1 for infer, 2 for train)")
    p.add_argument("--runs", type=int, default=5, help="timed iterations (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s")
    p.add_argument("--scaling", action="store_true", help="also time 3 smaller sizes and 100/300/1000 proposals")
    p.add_argument("--layers", action="store_true", help="also time each dense layer call alone: the layer ceiling")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a subprocess)")
    p.add_argument("--peak-gflops", type=float, metavar="RATE", help="use this peak GFLOP/s instead of measuring it")
    p.add_argument("--output", default="bench.json", help="JSON record (default: %(default)s)")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        model=args.model,
        weights=args.weights,
        design=args.design,
        size=parse_size(args.size) if args.size else None,
        threads=args.threads,
        mode=args.mode,
        precision=args.precision,
        exact=args.exact,
        batch=args.batch,
        runs=args.runs,
        warmup=args.warmup,
        device=args.device,
        scaling=args.scaling,
        layers=args.layers,
        memory=not args.no_memory,
        peak_gflops=args.peak_gflops,
    )


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    check_writable(args.output)  # before minutes of timing, not after
    onnx = args.weights is not None and is_onnx(args.weights)
    if onnx:
        from fpn.bench.onnx_file import report_onnx, run_onnx_bench  # onnxruntime only when asked for

        result = run_onnx_bench(options)
    else:
        result = run_bench(options)
    result["command"] = command_line(args)
    atomic_write_text(json.dumps(result, indent=2) + "\n", args.output)
    print(report_onnx(result) if onnx else report(result))
    print(f"-> {args.output}")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """An ``fpn bench`` command that repeats this measurement (every option spelled out)."""
    words = ["fpn", "bench", "--weights", args.weights] if args.weights else ["fpn", "bench", "--model", args.model]
    for name in ("design", "size", "threads", "mode", "precision", "batch", "runs", "warmup", "device", "peak_gflops"):
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    for flag in ("exact", "scaling", "layers", "no_memory"):
        words += [f"--{flag.replace('_', '-')}"] if getattr(args, flag) else []
    return shlex.join([*words, "--output", args.output])


def report(result: dict) -> str:
    """The record as a few readable lines."""
    machine = result["machine"]
    lines = [
        f"{result['model']} ({result['design']}), {result['mode']} {result['precision']}, "
        f"{result['batch']} image(s) of {result['size']}, {result['threads']} thread(s) on {result['device']} "
        f"({machine.get('gpu', machine['cpu'])})",
        f"  iteration  median {result['median_s']:.4f} s (min {result['min_s']:.4f}, max {result['max_s']:.4f}, "
        f"IQR {result['iqr_s']:.4f}, {result['runs']} runs)   {result['images_per_s']:.2f} images/s",
        "  stages     " + "  ".join(f"{name} {seconds:.4f}" for name, seconds in result["stages"].items()),
        f"  compute    {result['gflops']:.2f} GFLOPs, {result['gflops_per_s']:.1f} GFLOP/s = "
        f"{100 * result['fraction_of_peak']:.0f}% of the peak {result['peak_gflops_per_s']:.1f} GFLOP/s "
        f"({result['peak_kernel']})",
    ]
    if result.get("paired_fraction_of_peak") is not None:
        rates = result["peak_during_runs_gflops_per_s"]
        lines.append(
            f"  paired     {100 * result['paired_fraction_of_peak']:.0f}% of the peak measured after each "
            f"iteration ({min(rates):.1f}-{max(rates):.1f} GFLOP/s)"
            + (
                f", executed {100 * result['executed_paired_fraction_of_peak']:.0f}%"
                if result["executed_gflops"] < result["gflops"]
                else ""
            )
        )
    if result["executed_gflops"] < result["gflops"]:
        lines.append(
            f"  executed   {result['executed_gflops']:.2f} GFLOPs (Winograd), {result['executed_gflops_per_s']:.1f} "
            f"GFLOP/s = {100 * result['executed_fraction_of_peak']:.0f}% of the peak"
        )
    if result["peak_mb"] is not None:
        lines.append(f"  memory     +{result['peak_mb']:.0f} MB in one iteration ({result['peak_mb_method']})")
    if result.get("page_faults_per_iteration") is not None:
        lines.append(f"  faults     {result['page_faults_per_iteration']:.0f} minor page faults per iteration")
    layers = result.get("layers")
    if layers:
        lines.append(
            f"  layers     {layers['calls']} dense calls timed alone: {layers['seconds']:.4f} s = "
            f"{100 * layers['share_of_iteration']:.0f}% of the iteration, {layers['gflops_per_s']:.1f} GFLOP/s = "
            f"{100 * layers['fraction_of_peak']:.0f}% of the peak; "
            f"ceiling {100 * layers['ceiling_fraction_of_peak']:.0f}%"
            + (
                f", paired {100 * layers['paired_ceiling_fraction_of_peak']:.0f}%"
                if layers.get("paired_ceiling_fraction_of_peak")
                else ""
            )
        )
        for call in layers["slowest"][:3]:
            lines.append(
                f"             {call['ms_total']:.1f} ms  {call['count']} x {call['call']} "
                f"({call['gflops_per_s']:.0f} GFLOP/s)"
            )
    scaling = result.get("scaling")
    if scaling:
        sizes = ", ".join(f"{p['size']} {p['s_per_megapixel']:.3f}" for p in scaling["sizes"])
        fit = scaling["size_fit"]
        lines.append(
            f"  size       s/megapixel: {sizes}; fit {fit['fixed_s']:.3f} s + {fit['s_per_megapixel']:.3f} s/MP"
        )
        if "proposals" in scaling:  # two-stage detectors only
            props = ", ".join(f"{p['post_nms_top_n']} {p['median_s']:.4f} s" for p in scaling["proposals"])
            lines.append(f"  proposals  {scaling['proposals_key']}: {props}")
    return "\n".join(lines)
