"""torchvision's RetinaNet and FCOS checkpoints run in fpn against torchvision itself: same detections, speed ratio.

Runs in the reference venv (torchvision is never a dependency of fpn), from the repository root::

    /tmp/ref/refvenv/bin/python benchmarks/one_stage_reference.py --threads 2 --runs 5

For each of ``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn`` (v1): torchvision's model built as its COCO
model is (frozen BN; eps 0 for RetinaNet, 1e-5 for FCOS), with the parity goldens' arranged deterministic
weights (``tools/reference/retinanet_weights.py``, ``fcos_weights.py``: fresh heads score nothing above the
threshold, which would time an untypical post-processing). Its state dict is saved to a temporary ``.pth`` and
loaded by ``fpn.detection.load_detector`` (layout recognised from the keys), so both run the same weights.

1. Agreement on each photo (``tools/reference/drawn_photos.py``, at the models' 800/1333 resize): fpn plain
   and optimized (as ``fpn detect`` runs it) against torchvision: same number, same labels in score order,
   largest box and score difference.
2. Latency: ``--runs`` rounds after one warm-up; each round runs every model on every photo (batch 1), the
   models' order rotating from round to round; median per image; the ratio is torchvision's median over fpn's.

Writes ``benchmarks/results/one_stage_reference_<date>.{md,json}``. Numbers are comparable only within one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools" / "reference"))
sys.path.insert(0, str(REPO / "benchmarks"))
from drawn_photos import PHOTO_SPECS, draw_photo  # noqa: E402
from make_fcos_goldens import build_model as build_fcos  # noqa: E402
from make_retinanet_goldens import build_model as build_retinanet  # noqa: E402
from reference_torchvision import interleaved  # noqa: E402
from tiling import cpu_model  # noqa: E402

from fpn.detection import load_detector  # noqa: E402

PHOTOS = ("photo1_640x480.png", "photo3_997x1058.png", "photo4_750x1333.png")


def agreement(reference: list[dict], ours: list[dict]) -> dict:
    same_count = same_labels = 0
    worst_box = worst_score = 0.0
    for theirs, mine in zip(reference, ours):
        if len(theirs["scores"]) != len(mine["scores"]):
            continue
        same_count += 1
        if torch.equal(theirs["labels"], mine["labels"]):
            same_labels += 1
            if len(mine["scores"]):
                worst_box = max(worst_box, float((theirs["boxes"] - mine["boxes"]).abs().max()))
                worst_score = max(worst_score, float((theirs["scores"] - mine["scores"]).abs().max()))
    detections = sum(len(t["scores"]) for t in reference)
    return {"images": len(reference), "same_count": same_count, "same_labels": same_labels,
            "detections": detections, "max_box_px": worst_box, "max_score": worst_score}  # fmt: skip


def run(model, images: list[torch.Tensor]) -> list[dict]:
    with torch.inference_mode():
        return [{k: v.clone() for k, v in model([image])[0].items()} for image in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = [draw_photo(*PHOTO_SPECS[name]).float() / 255 for name in PHOTOS]
    builders = {"retinanet_resnet50_fpn": build_retinanet, "fcos_resnet50_fpn": lambda: build_fcos(800, 1333)}
    rows, checks = {}, {}
    tasks = {}
    for name, build in builders.items():
        reference = build()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.pth"
            torch.save(reference.state_dict(), path)
            plain, _ = load_detector(path)
            optimized, _ = load_detector(path)
        with torch.inference_mode():
            optimized.optimize_for_inference()
        expected = run(reference, images)
        checks[name] = {"plain": agreement(expected, run(plain, images)),
                        "optimized": agreement(expected, run(optimized, images))}  # fmt: skip
        for label, model in ((f"{name} torchvision", reference), (f"{name} fpn", optimized)):
            tasks[label] = [lambda m=model, x=image: run(m, [x]) for image in images]
    times = interleaved(tasks, runs=args.runs, warmup=1)
    for label, values in times.items():
        rows[label] = statistics.median(values)
    ratios = {name: rows[f"{name} torchvision"] / rows[f"{name} fpn"] for name in builders}
    record = {
        "date": str(datetime.date.today()), "cpu": cpu_model(), "threads": args.threads,
        "load_average": os.getloadavg(), "torch": str(torch.__version__),
        "torchvision": str(__import__("torchvision").__version__), "photos": PHOTOS,
        "median_s_per_image": rows, "speedup": ratios, "agreement": checks, "runs": args.runs,
    }  # fmt: skip
    lines = [
        f"# torchvision's one-stage checkpoints in fpn vs in torchvision ({record['date']})",
        "",
        f"Command: `/tmp/ref/refvenv/bin/python benchmarks/one_stage_reference.py --threads {args.threads} "
        f"--runs {args.runs}`",
        "",
        f"CPU: {record['cpu']}, {args.threads} threads; load average at the end {record['load_average']}; "
        f"torch {record['torch']}, torchvision {record['torchvision']}. Photos {', '.join(PHOTOS)} at 800/1333.",
        "",
        "| model | torchvision s/image | fpn (optimized fp32) s/image | fpn speed |",
        "| --- | --- | --- | --- |",
    ]
    for name in builders:
        lines.append(
            f"| {name} | {rows[f'{name} torchvision']:.2f} | {rows[f'{name} fpn']:.2f} | {ratios[name]:.2f}x |"
        )
    lines += [
        "",
        "Agreement with torchvision (same count / same labels in order, of the photos; largest differences):",
        "",
    ]
    for name, check in checks.items():
        for path, c in check.items():
            lines.append(
                f"- {name}, fpn {path}: {c['same_count']}/{c['images']} same count, {c['same_labels']}/{c['images']} "
                f"same labels, {c['detections']} detections, boxes within {c['max_box_px']:.1e} px, "
                f"scores within {c['max_score']:.1e}"
            )
    text = "\n".join(lines) + "\n"
    out = args.out_dir / f"one_stage_reference_{record['date']}"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
