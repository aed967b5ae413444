"""The one-stage CPU presets against tiny-fpn (Faster R-CNN) on the synthetic set, in equal CPU minutes.

    .venv/bin/python benchmarks/one_stage.py --minutes 4 --runs runs/one_stage

Each preset (``tiny-fpn``, ``tiny-retinanet``, ``tiny-fcos``) is trained from scratch by ``fpn train --data
synthetic --model P --minutes M`` (the schedule follows the clock), one run after another on an otherwise idle
machine with the same threads, so equal wall minutes are equal CPU minutes; the CPU seconds each run used are
read from ``getrusage`` and reported, so a run disturbed by another process shows. Its final val evaluation
(``metrics.json``, pycocotools) gives AP, AP50, AP75, APs; latency is each trained ``model.pt`` optimized as
``fpn detect`` runs it, on the val images at the preset's size, in alternating rounds across the presets
(median ms per image). Writes ``benchmarks/results/one_stage_<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from fpn.data import load_dataset
from fpn.detection import load_detector

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from records import timed_run  # noqa: E402
from tiling import cpu_model  # noqa: E402

PRESETS = ("tiny-fpn", "tiny-retinanet", "tiny-fcos")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def interleaved_rounds(calls: dict, rounds: int) -> dict[str, list[float]]:
    """One warm-up round, then ``rounds`` rounds of every call once, the order rotating each round."""
    names, times = list(calls), {name: [] for name in calls}
    for index in range(rounds + 1):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            calls[name]()
            if index:
                times[name].append(time.perf_counter() - start)
    return times


def train(preset: str, minutes: float, out: Path) -> dict:
    command = [sys.executable, "-m", "fpn", "train", "--data", "synthetic", "--model", preset,
               "--minutes", str(minutes), "--out", str(out)]  # fmt: skip
    wall, cpu = timed_run(command)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"command": " ".join(command[1:]), "wall_s": wall, "cpu_s": cpu, "metrics": metrics}


def metric(metrics: dict, name: str) -> float | None:
    """A COCO metric (percent) from a run's metrics.json."""
    value = metrics["metrics"].get(name)
    return None if value is None else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--runs", type=Path, default=Path("runs/one_stage"))
    parser.add_argument("--threads", type=int, default=2, help="threads for the latency rounds (training: torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    presets = args.presets.split(",")
    load_before = os.getloadavg()
    results = {p: train(p, args.minutes, args.runs / p) for p in presets}

    torch.set_num_threads(args.threads)
    val = load_dataset("synthetic", "val")
    images = [val.load_image(i) for i in range(args.images)]
    models = {}
    for p in presets:
        model, _ = load_detector(args.runs / p / "model.pt")
        with torch.inference_mode():
            models[p] = model.optimize_for_inference()

    def call(model):
        with torch.inference_mode():
            for image in images:
                model([image])

    times = interleaved_rounds({p: (lambda m=models[p]: call(m)) for p in presets}, rounds=args.rounds)
    for p in presets:
        results[p]["latency_ms"] = 1000 * statistics.median(times[p]) / len(images)
    record = {"date": str(datetime.date.today()), "cpu": cpu_model(), "threads": args.threads,
              "minutes": args.minutes, "load_before": load_before, "load_after": os.getloadavg(),
              "results": results}  # fmt: skip
    lines = [
        f"# One-stage CPU presets vs tiny-fpn on `synthetic`, {args.minutes:g} minutes each ({record['date']})",
        "",
        f"Command: `.venv/bin/python benchmarks/one_stage.py --minutes {args.minutes:g} --threads {args.threads}`",
        "",
        f"CPU: {record['cpu']}, {args.threads} threads; load average before {load_before}, after "
        f"{record['load_after']}. Latency: median over {args.rounds} alternating rounds of {args.images} val "
        "images, optimized fp32, batch 1.",
        "",
        "| preset | " + " | ".join(METRICS) + " | latency ms/image | CPU s used | iterations |",
        "| --- |" + " --- |" * (len(METRICS) + 3),
    ]
    for p in presets:
        r = results[p]
        cells = [f"{metric(r['metrics'], m):.1f}" if metric(r["metrics"], m) is not None else "?" for m in METRICS]
        iterations = r["metrics"].get("iteration", r["metrics"].get("iterations", "?"))
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {r['latency_ms']:.0f} | {r['cpu_s']:.0f} | {iterations} |")
    text = "\n".join(lines) + "\n"
    out = args.out_dir / f"one_stage_{record['date']}"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
