"""How many RPN proposals a trained two-stage checkpoint needs at test time: AP and latency per count.

    .venv/bin/python benchmarks/proposals.py --weights runs/tiny/model.pt --data synthetic --counts 300,150,100,50

For each ``rpn.post_nms_top_n_test`` in ``--counts`` the checkpoint is scored on the split with fpn's own COCO
evaluation (the unoptimized model, batch 1), then every count's optimized model (as ``fpn detect`` runs it)
is timed at batch 1 on the split's first ``--images`` decoded images, in alternating rounds across the counts
(so that the machine's drift falls on all of them alike). Writes ``benchmarks/results/proposals_<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

from fpn.data import load_dataset
from fpn.detection import load_detector
from fpn.engine.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from one_stage import interleaved_rounds  # noqa: E402
from records import METRIC_KEYS, write_record  # noqa: E402
from tiling import cpu_model  # noqa: E402


def with_proposals(weights: Path, count: int):
    model, _ = load_detector(weights)
    model.config.rpn.post_nms_top_n_test = count  # the RPN reads its config at every call
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="a two-stage (Faster R-CNN) checkpoint")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--split", default="val")
    parser.add_argument("--counts", default="300,150,100,50")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.counts.split(",")]
    dataset = load_dataset(args.data, args.split)
    load_before = os.getloadavg()
    metrics = {
        count: evaluate(with_proposals(args.weights, count), dataset, batch_size=1)["metrics"] for count in counts
    }
    images = [dataset.load_image(i) for i in range(min(args.images, len(dataset)))]
    with torch.inference_mode():
        models = {count: with_proposals(args.weights, count).optimize_for_inference() for count in counts}
        calls = {count: (lambda m=model: [m([image]) for image in images]) for count, model in models.items()}
        rounds = interleaved_rounds(calls, args.rounds)
    latency = {count: 1000 * statistics.median(times) / len(images) for count, times in rounds.items()}
    record = {"weights": str(args.weights), "data": args.data, "split": args.split, "cpu": cpu_model(),
              "threads": args.threads, "images_timed": len(images), "rounds": args.rounds,
              "load_before": load_before, "load_after": os.getloadavg(),
              "runs": [{"post_nms_top_n_test": c, "metrics": metrics[c], "latency_ms": latency[c],
                        "round_ms": [1000 * t / len(images) for t in rounds[c]]} for c in counts]}  # fmt: skip
    lines = [
        f"# RPN proposals at test time: `{args.weights.name}` on `{args.data}` {args.split}",
        "",
        f"Command: `.venv/bin/python benchmarks/proposals.py --weights {args.weights} --data {args.data} --counts "
        f"{args.counts}`",
        "",
        f"CPU: {record['cpu']}, {args.threads} threads; load average before {tuple(round(v, 2) for v in load_before)}. "
        f"Latency: batch 1, optimized fp32, median of {args.rounds} alternating rounds over {len(images)} images.",
        "",
        "| rpn.post_nms_top_n_test | " + " | ".join(METRIC_KEYS) + " | latency ms/image |",
        "| --- |" + " --- |" * (len(METRIC_KEYS) + 1),
    ]
    for count in counts:
        cells = [f"{metrics[count][k]:.1f}" if metrics[count][k] is not None else "-" for k in METRIC_KEYS]
        lines.append(f"| {count} | " + " | ".join(cells) + f" | {latency[count]:.1f} |")
    write_record(args.out_dir, "proposals", lines, record)


if __name__ == "__main__":
    main()
