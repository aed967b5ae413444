"""Time torchvision's ``fasterrcnn_resnet50_fpn`` and fpn's ``r50-fpn`` on the same images with the same weights.

Runs in the reference venv (torchvision is never a dependency of fpn; see DEVELOPERS.md), from the repository
root::

    /work/refvenv/v/bin/python benchmarks/reference_torchvision.py --threads 2 --size 800x1216 --runs 5

torchvision's model is built as its COCO model is when weights are given,
``FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91)``, in eval mode,
with the deterministic weights of the parity goldens (``tools/reference/deterministic_weights.py``: random
initialisation gives a detector with no confident detections, which would time an untypical post-processing).
Its state dict is saved to a temporary ``.pth`` and loaded by ``fpn.checkpoints.load_detector`` (layout
detection and key conversion, FrozenBatchNorm eps 1e-5 as torchvision's default), so both run the same
weights. Both resize nothing: their ``min_size``/``max_size`` are set so the network sees exactly ``--size``.

1. Agreement: each image through both models once; the detections must be the same number, matched one to one
   with the same labels and boxes within 0.01 px (in any order: equal scores may come out in either order; the
   largest score difference is reported). A difference makes the exit status 1.
2. Inference: ``--runs`` rounds after ``--warmup``; in each round every model runs every image (batch 1),
   the models' order rotating from round to round so that a drift of the machine's speed hits all alike.
   Medians and spread of the per-image times.
3. Training step (forward + backward + SGD step, lr 0 so that every step does the same work, synthetic targets
   from ``fpn.bench.synthetic_targets``) at ``--batch`` images of ``--size``, interleaved the same way, for
   both r50 models and for fpn's ``tiny-fpn`` (no torchvision equivalent: reported on its own).

Prints a Markdown table and writes it with a JSON record (machine, threads, exact command) to
``benchmarks/results/reference_<date>.{md,json}``. Numbers are comparable only within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
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
from deterministic_weights import deterministic_state_dict, state_dict_shapes  # noqa: E402
from make_detector_goldens import draw_image  # noqa: E402

from fpn.bench import fit_input, format_size, parse_size, spread, synthetic_targets  # noqa: E402
from fpn.checkpoints import load_detector  # noqa: E402
from fpn.data.images import pil_to_tensor  # noqa: E402
from fpn.detection import FasterRCNN as OurFasterRCNN  # noqa: E402
from fpn.measure import machine_info  # noqa: E402
from fpn.presets import preset  # noqa: E402

BOX_TOLERANCE_PX = 0.01
IMAGE_SEEDS = (11, 22, 33, 44, 55, 66)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--size", default="800x1216", help="HEIGHTxWIDTH the networks see (default: %(default)s)")
    parser.add_argument("--images", type=int, default=3, help="test images, at most 6 (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="timed inference rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="images per training step (default: %(default)s)")
    parser.add_argument("--train-runs", type=int, default=3, help="timed training steps (default: %(default)s)")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="where results go")
    args = parser.parse_args(argv)
    if not 1 <= args.images <= len(IMAGE_SEEDS):
        parser.error(f"--images must be 1..{len(IMAGE_SEEDS)}")
    return args


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


def tiny_model(height: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = OurFasterRCNN(preset("tiny-fpn"))
    fit_input(model, height, width)
    return model.eval()


# ------------------------------------------------------------------------------------------------------ checks
def agreement(reference: torch.nn.Module, ours: torch.nn.Module, images: list[torch.Tensor]) -> dict[str, Any]:
    """Run each image through both models: the same detections (count, labels, boxes within tolerance)?

    Detections are matched as sets, one to one (same label, every coordinate within the tolerance): two
    detections with equal scores can come out in either order, as the last bit of a convolution depends on
    the thread count. ``reordered`` counts the positions where the two lists differ in order only.
    """
    per_image = []
    for image in images:
        with torch.inference_mode():
            theirs = reference([image])[0]
            mine = ours([image])[0]
        distance = torch.cdist(theirs["boxes"].double(), mine["boxes"].double(), p=float("inf"))
        distance[theirs["labels"][:, None] != mine["labels"][None, :]] = float("inf")
        used: set[int] = set()
        largest, score_diff = 0.0, 0.0
        for i in range(len(theirs["boxes"])):
            candidates = [j for j in distance[i].argsort().tolist() if j not in used]
            if candidates and distance[i, candidates[0]] <= BOX_TOLERANCE_PX:
                j = candidates[0]
                used.add(j)
                largest = max(largest, float(distance[i, j]))
                score_diff = max(score_diff, abs(float(theirs["scores"][i] - mine["scores"][j])))
        count = len(theirs["boxes"])
        record: dict[str, Any] = {
            "torchvision": count,
            "fpn": len(mine["boxes"]),
            "matched": len(used),
            "reordered": 0 if len(mine["boxes"]) != count else int((distance.diagonal() > BOX_TOLERANCE_PX).sum()),
            "max_box_diff_px": largest,
            "max_score_diff": score_diff,
        }
        record["agree"] = record["fpn"] == count == len(used)
        per_image.append(record)
    return {"agree": all(r["agree"] for r in per_image), "tolerance_px": BOX_TOLERANCE_PX, "images": per_image}


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


def infer_call(model: torch.nn.Module, image: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return model([image])

    return call


def train_call(
    model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
) -> Callable[[], None]:
    """One training step, the same code for every model (fpn.bench's step: SGD with lr 0)."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)

    def call() -> None:
        torch.manual_seed(0)  # the same sampled anchors and RoIs at every step
        losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return call


def summarize(times: list[float], images_per_call: int) -> dict[str, Any]:
    stats = spread(times)
    stats["images_per_s"] = images_per_call / stats["median_s"]
    return stats


# ------------------------------------------------------------------------------------------------------ report
def markdown(record: dict[str, Any]) -> str:
    machine = record["machine"]
    lines = [
        f"# fpn vs torchvision, {record['date']}",
        "",
        f"`{record['command']}`",
        "",
        f"{machine['cpu']} ({machine['usable_cores']} usable cores), {record['threads']} thread(s), "
        f"torch {machine['torch']}, torchvision {machine['torchvision']}; input {record['size']}, "
        f"{record['images']} images, load average {machine.get('load_average_1m', float('nan')):.2f} at the end.",
        "",
        "| model | task | median s | min s | max s | IQR s | images/s | vs torchvision |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for task, unit in (("infer", "per image"), ("train", f"per step of {record.get('batch')}")):
        results = record.get(task) or {}
        base = results.get("torchvision r50-fpn")
        for name, stats in results.items():
            ratio = f"{base['median_s'] / stats['median_s']:.2f}x" if base and "r50" in name else ""
            lines.append(
                f"| {name} | {task} ({unit}) | {stats['median_s']:.3f} | {stats['min_s']:.3f} | {stats['max_s']:.3f} "
                f"| {stats['iqr_s']:.3f} | {stats['images_per_s']:.3f} | {ratio} |"
            )
    for label, key in (("fpn", "agreement"), ("fpn optimized (BN folded, channels-last)", "agreement_optimized")):
        check = record[key]
        worst = max((r.get("max_box_diff_px", 0.0) for r in check["images"]), default=0.0)
        counts = ", ".join(f"{r['torchvision']}/{r['fpn']}/{r['matched']}" for r in check["images"])
        scores = max((r.get("max_score_diff", 0.0) for r in check["images"]), default=0.0)
        reordered = sum(r["reordered"] for r in check["images"])
        lines += [
            "",
            f"{label}: detections {'agree' if check['agree'] else 'DIFFER'} (torchvision/fpn/matched per image: "
            f"{counts}; largest box difference {worst:.2g} px, tolerance {check['tolerance_px']} px; largest score "
            f"difference {scores:.2g}; {reordered} detections in another order among equal scores).",
        ]
    lines += [
        "",
        "\"vs torchvision\" is torchvision's median time over fpn's (above 1: fpn is faster). Timings are "
        "comparable only within one run on one machine.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = parse_size(args.size)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])])

    images = [pil_to_tensor(draw_image(height, width, seed)) for seed in IMAGE_SEEDS[: args.images]]
    reference = torchvision_model(height, width)
    ours = our_model(reference, height, width)
    optimized = our_model(reference, height, width).optimize_for_inference()  # what `fpn detect` runs
    tiny = tiny_model(height, width)
    print(f"checking detections on {len(images)} images of {format_size((height, width))} ...", flush=True)
    check = agreement(reference, ours, images)
    check_optimized = agreement(reference, optimized, images)

    print(f"inference: {args.warmup} + {args.runs} rounds ...", flush=True)
    models = {"torchvision r50-fpn": reference, "fpn r50-fpn": ours, "fpn tiny-fpn": tiny}
    infer_models = {**models, "fpn r50-fpn optimized": optimized}
    tasks = {name: [infer_call(model, image) for image in images] for name, model in infer_models.items()}
    infer_times = interleaved(tasks, runs=args.runs, warmup=args.warmup)
    infer = {name: summarize(times, 1) for name, times in infer_times.items()}

    train = None
    if not args.no_train:
        print(f"training steps: {args.warmup} + {args.train_runs} rounds of {args.batch} images ...", flush=True)
        batch = [images[i % len(images)] for i in range(args.batch)]
        classes = {name: 91 if "r50" in name else model.config.num_classes for name, model in models.items()}
        tasks = {
            name: [train_call(model, batch, synthetic_targets(args.batch, height, width, classes[name]))]
            for name, model in models.items()
        }
        train_times = interleaved(tasks, runs=args.train_runs, warmup=args.warmup)
        train = {name: summarize(times, args.batch) for name, times in train_times.items()}

    machine = machine_info()
    machine["torchvision"] = str(torchvision.__version__)
    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": machine,
        "threads": args.threads,
        "size": format_size((height, width)),
        "images": len(images),
        "runs": args.runs,
        "warmup": args.warmup,
        "batch": args.batch,
        "train_runs": None if args.no_train else args.train_runs,
        "weights": "tools/reference/deterministic_weights.py (the parity goldens' weights)",
        "agreement": check,
        "agreement_optimized": check_optimized,
        "infer": infer,
        "train": train,
    }
    table = markdown(record)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"reference_{time.strftime('%Y-%m-%d')}"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {stem}.md, {stem}.json")
    return 0 if check["agree"] and check_optimized["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
