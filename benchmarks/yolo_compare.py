"""fpn's CPU preset against YOLOv8n from scratch: same data, same wall minutes and threads, one pycocotools code.

    .venv/bin/python benchmarks/yolo_compare.py --ref-python $R/bin/python --minutes 5 --seeds 0,1

The built-in synthetic set is written once in YOLO format and in COCO format (``fpn convert``, exact round
trips). Per seed, one run after another on an otherwise idle machine:

- fpn: ``fpn train --data <yolo>/data.yaml --model nano-fpn --minutes M`` (another preset with ``--model``, extra
  overrides with ``--set``; the schedule follows the clock) at 320 px, with ``fpn compare``'s train settings,
  ``train.workers=0`` and ``--threads`` torch threads; then ``fpn eval --detections`` on the COCO copy of the val split;
- YOLOv8n: ``benchmarks/yolo_reference.py`` in the throwaway venv (``ultralytics``, never a project
  dependency): ``yolov8n.yaml``, no pretrained weights, ``time=M/60`` at ``imgsz=320``, ``workers=0``, the same
  threads (Ultralytics' own default on a 2-core machine is one thread: ``yolo_reference.py`` overrides it);
  then its val detections at Ultralytics' own validation settings.

Both detection lists are scored here by :func:`fpn.engine.evaluate.coco_metrics` against the same COCO val
json; fpn's checkpoint is also scored in bf16 (``fpn detect --precision bf16``). Latency: each trained model at
batch 1 on decoded val images (uint8), pre- and post-processing included (fpn optimized as ``fpn detect`` runs it, in
fp32 and in bf16; YOLO through ``model.predict`` in a ``yolo_reference.py --serve`` process), median over rounds
that alternate between the three, each side in its own process with the same threads: the machine's speed
drifts between minutes by more than the differences measured. The two sides run different torch builds (the
project's CPU 2.13.0; the reference venv's 2.14.1). Writes ``benchmarks/results/yolo_<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fpn.data import load_dataset
from fpn.detection import load_detector
from fpn.engine.config import DEMO_TRAIN
from fpn.engine.evaluate import coco_metrics, predict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from records import timed_run, write_record  # noqa: E402
from tiling import cpu_model  # noqa: E402

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def fpn_run(args, seed: int, data: Path, env: dict) -> dict:
    out = args.runs / f"fpn-seed{seed}"
    shared = [f"train.{k}={v}" for k, v in DEMO_TRAIN.items() if k not in ("workers", "checkpoint_every")]
    command = [sys.executable, "-m", "fpn", "train", "--data", str(data / "yolo" / "data.yaml"), "--model",
               args.model, "--minutes", str(args.minutes), "--out", str(out), *shared,
               "train.workers=0", f"train.seed={seed}",
               f"model.transform.min_size=[{args.imgsz}]",
               f"model.transform.max_size={args.imgsz}", *args.set]  # fmt: skip
    if not (out / "model.pt").is_file():
        wall, cpu = timed_run(command, env, args.runs / f"fpn-seed{seed}.log")
        (out / "bench.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}) + "\n")
    timing = json.loads((out / "bench.json").read_text())
    detections = out / "val_detections.json"
    if not detections.is_file():
        subprocess.run([sys.executable, "-m", "fpn", "eval", "--weights", str(out / "model.pt"), "--data",
                        str(data / "coco" / "data.yaml"), "--detections", str(detections), "--no-plots",
                        "--output", str(out / "eval")], check=True, env=env, capture_output=True)  # fmt: skip
    iterations = json.loads((out / "metrics.json").read_text()).get("iteration")
    return {"command": " ".join(command[1:]), **timing, "iterations": iterations,
            "detections": json.loads(detections.read_text())}  # fmt: skip


def yolo_run(args, seed: int, data: Path, env: dict, val: dict) -> dict:
    out = args.runs / f"yolo-seed{seed}"
    command = [args.ref_python, str(REPO / "benchmarks" / "yolo_reference.py"), "--data",
               str(data / "yolo" / "data.yaml"), "--minutes", str(args.minutes), "--threads", str(args.threads),
               "--imgsz", str(args.imgsz), "--seed", str(seed), "--images", str(args.images), "--rounds",
               str(args.rounds), "--out", str(out)]  # fmt: skip
    if not (out / "latency.json").is_file():
        timed_run(command, env, args.runs / f"yolo-seed{seed}.log")
    measured = json.loads((out / "latency.json").read_text())
    ids = {image["file_name"]: image["id"] for image in val["images"]}
    categories = [c["id"] for c in sorted(val["categories"], key=lambda c: c["id"])]
    detections = [
        {"image_id": ids[d["file_name"]], "category_id": categories[d["category_index"]], "bbox": d["bbox"],
         "score": d["score"]}
        for d in json.loads((out / "detections.json").read_text())
    ]  # fmt: skip
    return {"command": " ".join(command[1:]), **measured["train"], "latency_ms": measured["latency"]["ms_per_image"],
            "detections": detections}  # fmt: skip


def fpn_bf16_metrics(args, seed: int, data: Path, val: dict) -> dict:
    """COCO metrics of fpn's checkpoint run in bf16 (as ``fpn detect --precision bf16``), same val json."""
    torch.set_num_threads(args.threads)
    model, _ = load_detector(args.runs / f"fpn-seed{seed}" / "model.pt")
    with torch.inference_mode():
        model = model.optimize_for_inference(torch.bfloat16)
        detections = predict(model, load_dataset(str(data / "coco" / "data.yaml"), "val"), batch_size=1)
    return coco_metrics(val, detections)


def alternating_latency(args, seed: int, data: Path, env: dict) -> dict[str, dict]:
    """ms per image, batch 1, of fpn in fp32 and bf16 and of YOLOv8n, median over rounds alternating between them."""
    torch.set_num_threads(args.threads)
    val = load_dataset("synthetic", "val")
    # Decoded images, uint8 as the files hold them (YOLO gets decoded uint8 arrays): each side converts its own.
    images = [(val.load_image(i) * 255).round().to(torch.uint8) for i in range(args.images)]
    command = [args.ref_python, str(REPO / "benchmarks" / "yolo_reference.py"), "--serve", "--data",
               str(data / "yolo" / "data.yaml"), "--minutes", "0", "--threads", str(args.threads), "--imgsz",
               str(args.imgsz), "--images", str(args.images), "--out", str(args.runs / f"yolo-seed{seed}")]  # fmt: skip
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def yolo_round() -> float:
        server.stdin.write("round\n")
        server.stdin.flush()
        return float(server.stdout.readline())

    rounds: dict[str, list[float]] = {"fpn": [], "fpn-bf16": [], "yolov8n": []}
    try:
        while server.stdout.readline().strip() != "ready":  # Ultralytics may print before it
            if server.poll() is not None:
                raise RuntimeError(f"{' '.join(command)} exited with {server.returncode}")
        with torch.inference_mode():
            models = {}
            for name, dtype in (("fpn", torch.float32), ("fpn-bf16", torch.bfloat16)):
                model, _ = load_detector(args.runs / f"fpn-seed{seed}" / "model.pt")
                models[name] = model.optimize_for_inference(dtype)
                for image in images[:3]:  # warm-up
                    models[name]([image])
            for _ in range(args.rounds):
                for name, model in models.items():
                    start = time.perf_counter()
                    for image in images:
                        model([image])
                    rounds[name].append(1000 * (time.perf_counter() - start) / len(images))
                rounds["yolov8n"].append(yolo_round())
    finally:
        server.stdin.close()
        server.wait()
    return {name: {"ms_per_image": statistics.median(values), "rounds_ms": values} for name, values in rounds.items()}


def paired_ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """Round ``i`` of one side over round ``i`` of the other (rounds alternate, so each pair ran seconds apart)."""
    return [a / b for a, b in zip(ours, theirs, strict=True)]


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-python", required=True, help="python of the throwaway venv with ultralytics")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--model", default="nano-fpn", help="fpn preset (default: the one in YOLOv8n's latency class)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides for fpn's training, e.g. model.pyramid.channels=48",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=Path("runs/yolo_compare"))
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.runs = args.runs.resolve()  # Ultralytics files a relative project under its own runs folder
    args.runs.mkdir(parents=True, exist_ok=True)
    data = args.runs / "data"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for fmt in ("yolo", "coco"):
        if not (data / fmt / "data.yaml").is_file():
            subprocess.run([sys.executable, "-m", "fpn", "convert", "synthetic", "--to", fmt, "--output",
                            str(data / fmt)], check=True, capture_output=True)  # fmt: skip
    val = json.loads((data / "coco" / "val.json").read_text())
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {"fpn": [], "yolov8n": []}
    for seed in seeds:
        for name, run in (
            ("fpn", lambda seed=seed: fpn_run(args, seed, data, env)),
            ("yolov8n", lambda seed=seed: yolo_run(args, seed, data, env, val)),
        ):
            record = run()
            record["metrics"] = coco_metrics(val, record.pop("detections"))
            record["seed"] = seed
            runs[name].append(record)
    runs["fpn-bf16"] = []
    for fpn, yolo, seed in zip(runs["fpn"], runs["yolov8n"], seeds, strict=True):
        measured = alternating_latency(args, seed, data, env)
        yolo["latency_alone_ms"] = yolo["latency_ms"]  # timed right after its training, by itself
        for record, name in ((fpn, "fpn"), (yolo, "yolov8n")):
            record["latency_ms"] = measured[name]["ms_per_image"]
            record["latency_rounds_ms"] = measured[name]["rounds_ms"]
        runs["fpn-bf16"].append({"seed": seed, "metrics": fpn_bf16_metrics(args, seed, data, val),
                                 "latency_ms": measured["fpn-bf16"]["ms_per_image"],
                                 "latency_rounds_ms": measured["fpn-bf16"]["rounds_ms"],
                                 "cpu_s": fpn["cpu_s"], "iterations": fpn.get("iterations")})  # fmt: skip
    record = {"date": str(datetime.date.today()), "cpu": cpu_model(), "threads": args.threads,
              "minutes": args.minutes, "imgsz": args.imgsz,
              "load_before": load_before, "load_after": os.getloadavg(), "runs": runs}  # fmt: skip
    means = {
        name: {m: statistics.mean(r["metrics"][m] or 0.0 for r in rs) for m in METRICS} for name, rs in runs.items()
    }
    latency = {name: statistics.mean(r["latency_ms"] for r in rs) for name, rs in runs.items()}
    ratio = means["fpn"]["AP"] / means["yolov8n"]["AP"] if means["yolov8n"]["AP"] else float("inf")
    lines = [
        f"# {args.model} vs YOLOv8n from scratch on `synthetic`, {args.minutes:g} min each ({record['date']})",
        "",
        f"Command: `.venv/bin/python benchmarks/yolo_compare.py --ref-python $R/bin/python --model {args.model} "
        f"--minutes {args.minutes:g} --seeds {args.seeds} --threads {args.threads} --rounds {args.rounds}"
        + (f" --set {' '.join(args.set)}" if args.set else "")
        + "` "
        "(R: a throwaway venv with torch 2.14.1, "
        "ultralytics, pycocotools).",
        "",
        f"CPU: {record['cpu']}, {args.threads} threads; load average before {load_before}, after "
        f"{tuple(round(v, 2) for v in record['load_after'])}. Input {args.imgsz} px. Latency: batch 1, decoded "
        f"image to detections, median of {args.rounds} rounds over {args.images} val images, the rounds alternating "
        f"between fpn fp32, fpn bf16 and YOLOv8n. Cells: mean (min-max) over seeds {args.seeds}. The bf16 row is "
        "the fp32 row's checkpoint run in bf16 (no training of its own).",
        "",
        "| model | " + " | ".join(METRICS) + " | latency ms/image | CPU s training | iterations / epochs |",
        "| --- |" + " --- |" * (len(METRICS) + 3),
    ]
    for name, rs in runs.items():
        cells = [cell([r["metrics"][m] or 0.0 for r in rs]) for m in METRICS]
        steps = ", ".join(str(r.get("iterations") or r.get("epochs")) for r in rs)
        cpu = ", ".join(f"{r['cpu_s']:.0f}" for r in rs)
        label = {"fpn": args.model, "fpn-bf16": f"{args.model} (bf16 inference)"}.get(name, name)
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {cell([r['latency_ms'] for r in rs])} | {cpu} | {steps} |"
        )
    lines += ["", f"AP ratio fpn / YOLOv8n: {ratio:.2f}x (goal 1.3x); latency {latency['fpn']:.1f} ms vs "
              f"{latency['yolov8n']:.1f} ms (goal: no more); in bf16 {latency['fpn-bf16']:.1f} ms at AP "
              f"{means['fpn-bf16']['AP']:.1f}."]  # fmt: skip
    # Each fpn round and the YOLOv8n round that follows it ran seconds apart: their ratio is the drift-free figure.
    for name in ("fpn", "fpn-bf16"):
        paired = [
            paired_ratios(r["latency_rounds_ms"], y["latency_rounds_ms"]) for r, y in zip(runs[name], runs["yolov8n"])
        ]
        record[f"{name}_over_yolov8n_per_round"] = paired
        cells = ", ".join(f"seed {seed}: {statistics.median(p):.3f} ({min(p):.2f}-{max(p):.2f}), faster in "
                          f"{sum(v < 1 for v in p)}/{len(p)}" for seed, p in zip(seeds, paired))  # fmt: skip
        lines.append(f"{name} / YOLOv8n latency, round by round (median (range)): {cells}.")
    write_record(args.out_dir, "yolo", lines, record)


if __name__ == "__main__":
    main()
