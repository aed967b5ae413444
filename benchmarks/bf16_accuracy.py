"""How much accuracy does bf16 inference cost? COCO metrics of one checkpoint in fp32 and in bf16.

    python benchmarks/bf16_accuracy.py --weights runs/demo/model.pt --data synthetic --threads 2

Both passes use the optimized inference path that ``fpn detect --precision`` runs (frozen BatchNorms folded,
channels-last; ``optimize_for_inference(torch.bfloat16)`` casts the networks' weights to bf16 once) on the same
val split; boxes and scores are decoded in fp32 in both (see fpn.detection.rpn / roi_heads). Writes a Markdown table and
JSON to benchmarks/results/bf16_accuracy_<date>.{md,json}. Timings are per image, measured in this one run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from records import METRIC_KEYS, write_record  # benchmarks/records.py (this script's folder)

from fpn.bench import machine_info
from fpn.data import load_dataset
from fpn.detection import load_detector
from fpn.engine.evaluate import evaluate

KEYS = METRIC_KEYS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, args.split)
    rows = {}
    for precision in ("fp32", "bf16"):
        model, _ = load_detector(args.weights)
        model.optimize_for_inference(torch.bfloat16 if precision == "bf16" else torch.float32)
        start = time.perf_counter()
        result = evaluate(model, dataset, batch_size=1)
        seconds = (time.perf_counter() - start) / len(dataset)
        rows[precision] = {**{k: result["metrics"][k] for k in KEYS}, "s_per_image": seconds}
        print(precision, rows[precision], flush=True)
    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "weights": args.weights,
        "data": f"{args.data} [{args.split}], {len(dataset)} images",
        "machine": machine_info(threads=args.threads),
        "results": rows,
    }
    lines = [
        f"# bf16 vs fp32 inference, {record['date']}",
        "",
        f"`{record['command']}`",
        "",
        f"{record['machine']['cpu']}, {args.threads} thread(s), torch {torch.__version__}; {record['data']};"
        f" weights {args.weights}.",
        "",
        "| precision | " + " | ".join(KEYS) + " | s per image (eval loop) |",
        "| --- | " + " | ".join("---:" for _ in KEYS) + " | ---: |",
    ]
    for precision, row in rows.items():
        lines.append(f"| {precision} | " + " | ".join(f"{row[k]:.2f}" for k in KEYS) + f" | {row['s_per_image']:.3f} |")
    change = rows["bf16"]["AP"] - rows["fp32"]["AP"]
    lines += ["", f"AP change bf16 - fp32: {change:+.2f} points."]
    write_record(args.out_dir, "bf16_accuracy", lines, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
