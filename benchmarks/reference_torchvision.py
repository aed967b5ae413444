"""Time torchvision's Faster R-CNN against fpn's presets on the same images with the same weights.

Runs in the reference venv (torchvision is never a dependency of fpn; see DEVELOPERS.md), from the repository
root::

    /work/refvenv/v/bin/python benchmarks/reference_torchvision.py --threads 2 --size 800x1216 --runs 5
    /work/refvenv/v/bin/python benchmarks/reference_torchvision.py --presets tiny-fpn --no-bf16 --runs 1  # quick

Pairs (``--presets``, default all four):

* ``r50-fpn``: torchvision's model built as its COCO model is when weights are given,
  ``FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91)``, with the
  deterministic weights of the parity goldens (``tools/reference/deterministic_weights.py``: random initialisation
  gives a detector with no confident detections, which would time an untypical post-processing). Its state dict is
  saved to a temporary ``.pth`` and loaded by ``fpn.detection.load_detector`` (layout detection and key
  conversion, FrozenBatchNorm eps 1e-5 as torchvision's default), so both run the same weights.
* ``r18-fpn``, ``small-fpn``, ``tiny-fpn``: torchvision equivalents built from torchvision's own modules and ops
  at the preset's shapes and settings (``torchvision_equivalents.py`` says how, and what cannot be expressed);
  fpn's preset with seeded random weights (``torch.manual_seed(0)``; r18-fpn: the goldens' deterministic weights,
  for detections to compare) is loaded into them with strict key matching.

``r50-fpn`` and ``r18-fpn`` see ``--size`` pixels; ``small-fpn`` and ``tiny-fpn`` see ``--small-size``, by
default each preset's test size (``fpn.bench.eval_size``: 352x469, what ``fpn bench`` uses). Every model's
``min_size``/``max_size`` are set so that the network sees exactly that size (no resize), in training too.

1. Agreement, per pair: each image through torchvision's model and fpn's (plain, and optimized as ``fpn detect``
   runs it); forward hooks compare the pyramid maps (P2..P6), the RPN's proposals and the box predictor's outputs,
   and the detections must be the same number, matched one to one with the same labels and boxes within 0.01 px
   (in any order: equal scores may come out in either order), as must the proposals. The trainable parameters
   must be the same. A difference makes the exit status 1. fpn in bf16 (``optimize_for_inference(dtype=
   torch.bfloat16)`` where that exists, else the fp32-optimized model under bf16 autocast) is checked loosely
   against torchvision's fp32: how many detections match within 2 px with the same label (not expected exact).
2. Inference: ``--runs`` rounds after ``--warmup``; in each round every model of every pair runs every image of its
   size (batch 1), the models' order rotating from round to round so that a drift of the machine's speed hits all
   alike. Medians and spread of the per-image times; "vs torchvision" is the pair's torchvision fp32 median over
   the row's (bf16 rows included).
3. Training step (fpn's: forward + backward + SGD step, lr 0 so that every step does the same work, synthetic targets
   from ``fpn.bench.synthetic_targets``, the same for both models of a pair) at ``--batch`` images, both models of
   every pair interleaved the same way; fpn channels-last, as ``fpn train`` runs by default. Unless ``--no-bf16``,
   both also under bf16 autocast (``fpn train``'s ``train.amp=true`` on the CPU; torchvision's model under the same
   autocast, so that the precision's own gain is visible).
4. Peak memory of one training step, per model, each in a fresh process that builds the pair as above (both
   models, so that both probes start from the same state) and runs one fp32 step of one model: the rise of the
   resident-set high-water mark over the step, as ``fpn bench`` measures it (``fpn.bench.rss_peak_delta_mb``: the
   first step, so gradients and momentum buffers count). That reading varies by tens of MB from process to
   process, so ``--memory-runs`` processes per model (in rounds over all models) give a median and a range.

Prints Markdown tables and writes them with a JSON record (machine, threads, exact command) to
``benchmarks/results/reference_<date>.{md,json}`` (``--out-dir``). Numbers are comparable only within one run on
one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools" / "reference"))
sys.path.insert(0, str(REPO / "benchmarks"))
from deterministic_weights import deterministic_state_dict, state_dict_shapes  # noqa: E402
from make_detector_goldens import draw_image  # noqa: E402
from records import write_record  # noqa: E402  (benchmarks/records.py, this script's folder)
from torchvision_equivalents import (  # noqa: E402
    compare,
    fit_torchvision_input,
    load_fpn_weights,
    torchvision_detector,
    trainable_names,
)

from fpn.bench import (  # noqa: E402
    eval_size,
    fit_input,
    format_size,
    machine_info,
    parse_size,
    rss_peak_delta_mb,
    spread,
    synthetic_targets,
)
from fpn.data.images import pil_to_tensor  # noqa: E402
from fpn.detection import FasterRCNN as OurFasterRCNN  # noqa: E402
from fpn.detection import load_detector  # noqa: E402
from fpn.engine.step import train_step  # noqa: E402
from fpn.presets import preset  # noqa: E402

BOX_TOLERANCE_PX = 0.01
BF16_TOLERANCE_PX = 2.0
IMAGE_SEEDS = (11, 22, 33, 44, 55, 66)
PRESETS = ("r50-fpn", "r18-fpn", "small-fpn", "tiny-fpn")
LARGE_PRESETS = ("r50-fpn", "r18-fpn")  # COCO-sized: --size; the others: --small-size
SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated pairs (default: %(default)s)")
    parser.add_argument("--size", default="800x1216", help="HEIGHTxWIDTH for r50/r18-fpn (default: %(default)s)")
    parser.add_argument(
        "--small-size", default=None, help="HEIGHTxWIDTH for small/tiny-fpn (default: each preset's test size)"
    )
    parser.add_argument("--images", type=int, default=3, help="test images, at most 6 (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="timed inference rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="images per training step (default: %(default)s)")
    parser.add_argument("--train-runs", type=int, default=3, help="timed training steps (default: %(default)s)")
    parser.add_argument("--no-infer", action="store_true", help="skip the inference timing (checks still run)")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    parser.add_argument("--no-memory", action="store_true", help="skip the training-step peak memory")
    parser.add_argument(
        "--memory-runs", type=int, default=3, help="probe processes per model; the median is reported (default: 3)"
    )
    parser.add_argument(
        "--no-bf16", action="store_true", help="skip the bf16 rows (fpn's bf16 inference, bf16 autocast training)"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="where results go")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: the memory subprocess's job
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite the Markdown of a saved record (format changes)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.images <= len(IMAGE_SEEDS):
        parser.error(f"--images must be 1..{len(IMAGE_SEEDS)}")
    if args.memory_runs < 1:
        parser.error("--memory-runs must be at least 1")
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in args.presets if name not in PRESETS]
    if unknown or not args.presets:
        parser.error(f"--presets: choose among {', '.join(PRESETS)} (got {', '.join(unknown) or 'none'})")
    return args


def preset_size(name: str, args: argparse.Namespace) -> tuple[int, int]:
    if name in LARGE_PRESETS:
        return parse_size(args.size)
    return parse_size(args.small_size) if args.small_size else eval_size(preset(name))


# ------------------------------------------------------------------------------------------------------- models
def torchvision_model(height: int, width: int) -> torch.nn.Module:
    """torchvision's detector as its COCO model is built, with the parity goldens' deterministic weights."""
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = FasterRCNN(
        _resnet_fpn_extractor(body, 3), num_classes=91, min_size=min(height, width), max_size=max(height, width)
    )
    model.load_state_dict(deterministic_state_dict(state_dict_shapes(model)))
    return model.eval()


def our_model(reference: torch.nn.Module, height: int, width: int) -> torch.nn.Module:
    """fpn's r50-fpn loaded from the reference's state dict, as a user would load a torchvision checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fasterrcnn_resnet50_fpn_deterministic.pth"
        torch.save(reference.state_dict(), path)
        overrides = [
            "backbone.bn_eps=1e-5",  # FrozenBatchNorm2d's default (load_detector assumes the COCO checkpoint's 0)
            f"transform.min_size=[{min(height, width)}]",
            f"transform.max_size={max(height, width)}",
        ]
        model, _ = load_detector(path, config_overrides=overrides)
    return model.eval()


def preset_model(name: str, height: int, width: int) -> torch.nn.Module:
    """fpn's preset with seeded random weights (the same weights at every call); r18-fpn with deterministic ones.

    Seeded random weights give r18-fpn's 91-class predictor no score above the 0.05 threshold, so its
    detections would go unchecked (0 against 0); the parity goldens' name-derived weights give it detections.
    """
    torch.manual_seed(SEED)
    model = OurFasterRCNN(preset(name))
    if name == "r18-fpn":
        model.load_state_dict(deterministic_state_dict(state_dict_shapes(model)))
    fit_input(model, height, width)
    return model.eval()


@dataclass
class Pair:
    """A preset's torchvision model and fpn model, with the same weights, and the images of their size."""

    preset: str
    size: tuple[int, int]
    images: list[torch.Tensor]
    reference: torch.nn.Module
    ours: torch.nn.Module

    def fresh_fpn(self) -> torch.nn.Module:
        """Another fpn model with the same weights (to optimize: optimizing changes a model for good)."""
        if self.preset == "r50-fpn":
            return our_model(self.reference, *self.size)
        return preset_model(self.preset, *self.size)


def build_pair(name: str, size: tuple[int, int], image_count: int) -> Pair:
    height, width = size
    images = [pil_to_tensor(draw_image(height, width, seed)) for seed in IMAGE_SEEDS[:image_count]]
    if name == "r50-fpn":
        reference = torchvision_model(height, width)
        return Pair(name, size, images, reference, our_model(reference, height, width))
    ours = preset_model(name, height, width)
    reference = torchvision_detector(preset(name))
    load_fpn_weights(reference, ours)
    fit_torchvision_input(reference, height, width)
    return Pair(name, size, images, reference.eval(), ours)


def bf16_model(pair: Pair) -> tuple[torch.nn.Module, Callable[[], Any], str]:
    """fpn in bf16: ``optimize_for_inference(dtype=bfloat16)`` if it has that argument, else autocast."""
    model = pair.fresh_fpn()
    if "dtype" in inspect.signature(model.optimize_for_inference).parameters:
        model.optimize_for_inference(dtype=torch.bfloat16)
        return model, contextlib.nullcontext, "optimize_for_inference(dtype=torch.bfloat16)"
    model.optimize_for_inference()
    return model, lambda: torch.autocast("cpu", dtype=torch.bfloat16), "optimize_for_inference() + bf16 autocast"


# ------------------------------------------------------------------------------------------------------ timing
def interleaved(tasks: dict[str, list[Callable[[], Any]]], *, runs: int, warmup: int) -> dict[str, list[float]]:
    """Each round runs every task's calls once; the tasks' order rotates each round. Times of timed rounds."""
    names = list(tasks)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for call in tasks[name]:
                start = time.perf_counter()
                call()
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    times[name].append(elapsed)
    return times


def infer_call(
    model: torch.nn.Module, image: torch.Tensor, context: Callable[[], Any] = contextlib.nullcontext
) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode(), context():
            return model([image])

    return call


def train_call(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    amp: bool = False,
) -> Callable[[], None]:
    """One training step, the same code for every model: fpn's own (``fpn.engine.step.train_step``, what ``fpn
    train`` and ``fpn bench`` run), with SGD at lr 0 and no clipping (the gradient norm is still computed).

    ``amp``: the forward pass under bf16 autocast (what ``fpn train`` runs on the CPU with ``train.amp=true``).
    """
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
    amp_dtype = torch.bfloat16 if amp else None

    def call() -> None:
        # The same sampled anchors and RoIs at every step.
        train_step(model, optimizer, images, targets, amp_dtype=amp_dtype, seed=lambda chunk: torch.manual_seed(SEED))

    return call


def training_inputs(pair: Pair, batch: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [pair.images[i % len(pair.images)] for i in range(batch)]
    return images, synthetic_targets(batch, *pair.size, pair.ours.config.num_classes, seed=SEED)


def summarize(times: list[float], images_per_call: int, **meta: Any) -> dict[str, Any]:
    stats = spread(times)
    stats["images_per_s"] = images_per_call / stats["median_s"]
    return {**meta, **stats}


def as_fpn_train_runs(model: Any) -> Any:
    """The model as `fpn train` runs it on a CPU: train.channels_last and train.winograd default to true."""
    model.use_channels_last()
    model.use_winograd()
    return model


# ------------------------------------------------------------------------------------------------------ memory
def memory_probe_process(job_json: str) -> int:
    """Subprocess: build the pair as the main process does, one training step of one model, print its peak."""
    job = json.loads(job_json)
    torch.set_num_threads(job["threads"])
    pair = build_pair(job["preset"], tuple(job["size"]), job["images"])
    model = pair.reference if job["which"] == "torchvision" else as_fpn_train_runs(pair.ours)
    step = train_call(model, *training_inputs(pair, job["batch"]))
    peak_mb, method = rss_peak_delta_mb(step)
    print(json.dumps({"peak_mb": peak_mb, "method": method}))
    return 0


def probe_memory(pair: Pair, which: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one probe process (:func:`memory_probe_process`): ``{"peak_mb": MB or None, "method": ...}``."""
    job = {"preset": pair.preset, "which": which, "size": list(pair.size), "images": args.images}
    job.update(batch=args.batch, threads=args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(
        [sys.executable, __file__, "--memory-probe", json.dumps(job)], capture_output=True, text=True, env=env
    )
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"peak memory of {which} {pair.preset} not measured: {tail}", file=sys.stderr)
        return {"peak_mb": None, "method": f"failed: {tail[:200]}"}


def peak_memory(pairs: list[Pair], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``--memory-runs`` probes per model, in rounds over every model; the median of each model's peaks."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.memory_runs):
        for pair in pairs:
            for which in ("torchvision", "fpn"):
                runs.setdefault((pair.preset, which), []).append(probe_memory(pair, which, args))
    memory: dict[str, dict[str, Any]] = {}
    for (name, which), probes in runs.items():
        peaks = [probe["peak_mb"] for probe in probes if probe["peak_mb"] is not None]
        memory.setdefault(name, {})[which] = {
            "peak_mb": statistics.median(peaks) if peaks else None,
            "peak_mb_runs": [probe["peak_mb"] for probe in probes],
            "method": probes[-1]["method"],
        }
    return memory


# ------------------------------------------------------------------------------------------------------ report
def check_line(check: dict[str, Any]) -> str:
    images = check["images"]
    worst = max((r["max_box_diff_px"] for r in images), default=0.0)
    counts = ", ".join(f"{r['torchvision']}/{r['fpn']}/{r['matched']}" for r in images)
    scores = max((r["max_score_diff"] for r in images), default=0.0)
    reordered = sum(r["reordered"] for r in images)
    props = ", ".join(f"{p['torchvision']}/{p['fpn']}/{p['matched']}" for p in (r["proposals"] for r in images))
    prop_diff = max((r["proposals"]["max_diff_px"] for r in images), default=0.0)
    predictor = check["predictor_max_abs_diff"]
    if check.get("loose"):
        matched, total = sum(r["matched"] for r in images), sum(r["torchvision"] for r in images)
        verdict = f"{matched} of {total} torchvision fp32 detections matched (loose check)"
    else:
        verdict = f"detections {'agree' if check['agree'] else 'DIFFER'}"
    return (
        f"{verdict} (torchvision/fpn/matched per image: {counts}; largest box difference {worst:.2g} px, "
        f"tolerance {check['tolerance_px']} px; largest score difference {scores:.2g}; {reordered} detections in "
        f"another order among equal scores). Proposals torchvision/fpn/matched: {props} (largest difference "
        f"{prop_diff:.2g} px). Pyramid maps: largest difference {check['features_max_abs_diff']:.2g} (largest value "
        f"{check['features_max_abs']:.3g}). Box predictor outputs: largest difference "
        + ("not compared (proposals differ)" if predictor is None else f"{predictor:.2g}")
        + "."
    )


def memory_cell(measured: dict[str, Any]) -> str:
    peaks = [peak for peak in measured["peak_mb_runs"] if peak is not None]
    if not peaks:
        return "failed"
    spread_mb = f" [{min(peaks):.0f}-{max(peaks):.0f}]" if len(peaks) > 1 else ""
    return f"{measured['peak_mb']:.0f}{spread_mb}"


def paired_ratio(base_times: list[float], times: list[float]) -> float:
    """Median of ``base / time`` over the calls of the same round and image (the lists are in the same order)."""
    return statistics.median(b / t for b, t in zip(base_times, times))


def markdown(record: dict[str, Any]) -> str:
    machine = record["machine"]
    sizes = ", ".join(f"{name} {size}" for name, size in record["sizes"].items())
    lines = [
        f"# fpn vs torchvision, {record['date']}",
        "",
        f"`{record['command']}`",
        "",
        f"{machine['cpu']} ({machine['usable_cores']} usable cores), {record['threads']} thread(s), "
        f"torch {machine['torch']}, torchvision {machine['torchvision']}; inputs: {sizes}; {record['images']} "
        f"images, training steps of {record['batch']}; load average "
        f"{machine.get('load_average_1m', float('nan')):.2f} at the end.",
        "",
        "| model | task | input | median s | min s | max s | IQR s | images/s | vs torchvision | best vs best "
        "| paired |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for task, unit in (("infer", "per image"), ("train", f"per step of {record.get('batch')}")):
        results = record.get(task) or {}
        for name, stats in results.items():
            base = results.get(stats["baseline"])
            ratio = best = paired = ""
            if base and base is not stats:
                ratio, best = f"{base['median_s'] / stats['median_s']:.2f}x", f"{base['min_s'] / stats['min_s']:.2f}x"
                paired = f"{paired_ratio(base['times_s'], stats['times_s']):.2f}x"
            lines.append(
                f"| {name} | {task} ({unit}) | {stats['size']} | {stats['median_s']:.3f} | {stats['min_s']:.3f} "
                f"| {stats['max_s']:.3f} | {stats['iqr_s']:.3f} | {stats['images_per_s']:.3f} | {ratio} | {best} "
                f"| {paired} |"
            )
    lines += [
        "",
        "\"vs torchvision\" is the torchvision model's median time over the row's (above 1: fpn is faster); bf16 rows "
        'against torchvision in fp32. "best vs best" is the same for the fastest time of each: on a shared machine '
        'whose speed varies from minute to minute, each model\'s best time is the one least disturbed. "paired" is '
        "the median over rounds of the ratio of the two times measured in the same round (same image, run next to "
        "each other): drift between rounds cancels. Timings are comparable only within one run on one machine.",
    ]
    if record.get("memory"):
        lines += [
            "",
            f"Peak memory of one training step ({record['batch']} images; each model in a fresh process; rise of the "
            "resident-set high-water mark over the first step, as `fpn bench` measures it; median of "
            f"{record['memory_runs']} processes, range in brackets):",
            "",
            "| preset | input | torchvision MB | fpn MB | fpn / torchvision |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for name, mem in record["memory"].items():
            theirs, ours = mem["torchvision"]["peak_mb"], mem["fpn"]["peak_mb"]
            ratio = f"{ours / theirs:.2f}" if theirs and ours is not None else ""
            show = [memory_cell(mem[which]) for which in ("torchvision", "fpn")]
            lines.append(f"| {name} | {record['sizes'][name]} | {show[0]} | {show[1]} | {ratio} |")
    lines += ["", "## Checks", ""]
    for name, checks in record["checks"].items():
        lines.append(f"**{name}** ({checks['weights']}; {checks['trainable']}):")
        lines.append("")
        for label, key in (("fpn", "fpn"), ("fpn optimized", "optimized"), ("fpn bf16", "bf16")):
            if checks.get(key):
                detail = f" ({checks[key]['how']})" if "how" in checks[key] else ""
                lines += [f"- {label}{detail}: " + check_line(checks[key]), ""]
    if record.get("differences"):
        lines += ["What differs between the pairs beyond rounding: " + record["differences"]]
    return "\n".join(lines) + "\n"


DIFFERENCES = (
    "torchvision's transform draws one number from torch's generator per training image even with one "
    "`min_size` (fpn draws none), so the two sample other anchors and RoIs: the same amount of work. torchvision's "
    "RPN minimum box size (1e-3 px) and RoI-heads minimum (1e-2 px) are hard-coded; every preset uses those values. "
    "RoIAlign: torchvision's compiled kernel, fpn's pure-PyTorch one (same sampling, float rounding differs)."
)


# -------------------------------------------------------------------------------------------------------- main
def run_checks(pair: Pair, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pair's agreement checks, and the extra fpn models they built (optimized, bf16) for timing."""
    print(f"checking {pair.preset} on {len(pair.images)} images of {format_size(pair.size)} ...", flush=True)
    theirs, ours = trainable_names(pair.reference, torchvision=True), trainable_names(pair.ours, torchvision=False)
    trainable = f"same {len(ours)} trainable tensors" if theirs == ours else f"TRAINABLE DIFFER: {theirs ^ ours}"
    weights = {
        "r50-fpn": "deterministic weights of the parity goldens, loaded into fpn by load_detector",
        "r18-fpn": "deterministic weights of the parity goldens (fpn's keys), loaded into torchvision, strict",
    }.get(pair.preset, "fpn's seeded random init loaded into torchvision, strict")
    checks: dict[str, Any] = {"weights": weights, "trainable": trainable, "trainable_match": theirs == ours}
    checks["fpn"] = compare(pair.reference, pair.ours, pair.images, BOX_TOLERANCE_PX)
    optimized = pair.fresh_fpn().optimize_for_inference()  # what `fpn detect` runs
    checks["optimized"] = compare(pair.reference, optimized, pair.images, BOX_TOLERANCE_PX)
    extra = {"optimized": (optimized, contextlib.nullcontext)}
    if not args.no_bf16:
        model, context, how = bf16_model(pair)
        checks["bf16"] = compare(pair.reference, model, pair.images, BF16_TOLERANCE_PX, context)
        checks["bf16"].update(how=how, loose=True)
        extra["optimized bf16"] = (model, context)
    checks["agree"] = checks["trainable_match"] and checks["fpn"]["agree"] and checks["optimized"]["agree"]
    return checks, extra


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_probe:
        return memory_probe_process(args.memory_probe)
    if args.render:
        record = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(record))
        print(f"-> {args.render.with_suffix('.md')}")
        return 0
    torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])])

    pairs = [build_pair(name, preset_size(name, args), args.images) for name in args.presets]
    # Row name -> (pair, model, context of its calls); each row's "vs torchvision" baseline is its pair's first row.
    checks, infer_models, meta = {}, {}, {}
    for pair in pairs:
        checks[pair.preset], extra = run_checks(pair, args)
        infer_models[f"torchvision {pair.preset}"] = (pair, pair.reference, contextlib.nullcontext)
        infer_models[f"fpn {pair.preset}"] = (pair, pair.ours, contextlib.nullcontext)
        for label, (model, context) in extra.items():
            infer_models[f"fpn {pair.preset} {label}"] = (pair, model, context)
        meta[pair.preset] = {
            "preset": pair.preset,
            "size": format_size(pair.size),
            "baseline": f"torchvision {pair.preset}",
        }

    infer = None
    if not args.no_infer:
        print(f"inference: {args.warmup} + {args.runs} rounds ...", flush=True)
        tasks = {
            name: [infer_call(model, image, context) for image in pair.images]
            for name, (pair, model, context) in infer_models.items()
        }
        times = interleaved(tasks, runs=args.runs, warmup=args.warmup)
        infer = {name: summarize(times[name], 1, **meta[infer_models[name][0].preset]) for name in tasks}

    train = None
    if not args.no_train:
        print(f"training steps: {args.warmup} + {args.train_runs} rounds of {args.batch} images ...", flush=True)
        tasks, presets = {}, {}
        for pair in pairs:
            images, targets = training_inputs(pair, args.batch)  # the same for both models of the pair
            as_fpn_train_runs(pair.ours)
            for label, model, amp in (
                ("torchvision", pair.reference, False),
                ("fpn", pair.ours, False),
                ("torchvision bf16 autocast", pair.reference, True),
                ("fpn bf16 autocast", pair.ours, True),
            ):
                if amp and args.no_bf16:
                    continue
                tasks[f"{label} {pair.preset}"] = [train_call(model, images, targets, amp)]
                presets[f"{label} {pair.preset}"] = pair.preset
        times = interleaved(tasks, runs=args.train_runs, warmup=args.warmup)
        train = {name: summarize(times[name], args.batch, **meta[presets[name]]) for name in tasks}

    memory = None
    if not args.no_memory:
        print("peak memory of one training step, one process per model ...", flush=True)
        memory = peak_memory(pairs, args)

    machine = machine_info()
    machine["torchvision"] = str(torchvision.__version__)
    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": machine,
        "threads": args.threads,
        "size": args.size,
        "sizes": {pair.preset: format_size(pair.size) for pair in pairs},
        "presets": args.presets,
        "images": args.images,
        "runs": args.runs,
        "warmup": args.warmup,
        "batch": args.batch,
        "train_runs": None if args.no_train else args.train_runs,
        "weights": "r50-fpn: tools/reference/deterministic_weights.py (the parity goldens' weights); others: "
        f"fpn's preset initialisation after torch.manual_seed({SEED})",
        "checks": checks,
        "infer": infer,
        "train": train,
        "memory": memory,
        "memory_runs": None if args.no_memory else args.memory_runs,
        "differences": DIFFERENCES,
    }
    if "r50-fpn" in checks:  # the record's earlier keys
        record["agreement"], record["agreement_optimized"] = checks["r50-fpn"]["fpn"], checks["r50-fpn"]["optimized"]
    write_record(args.out_dir, "reference", markdown(record).rstrip("\n").split("\n"), record)
    return 0 if all(check["agree"] for check in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
