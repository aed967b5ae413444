"""Tiled detection on the large synthetic scenes: tiles per second batched vs one at a time, and AP tiled vs whole.

    .venv/bin/python benchmarks/tiling.py --preset tiny-fpn --tile 320 --rounds 3 [--weights RUN/model.pt]

Throughput: the same model, the same tiles of the first ``synthetic-large`` val scene, run with
``--tile-batch`` tiles per forward pass and with one, alternating round by round so that a drift of the
machine (another process, clocks) falls on both alike. Accuracy (with ``--weights``, a model trained on the
set's 512 px train tiles, e.g. ``fpn train --data synthetic-large --preset tiny-fpn``): COCO AP and APs of
the val scenes whole (the model's resize) and tiled, with COCO's per-image cap at 1000 for both and the
model's own per-image cap raised to match for the whole-image pass. Writes a Markdown report with the CPU
model and thread count to ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time
from pathlib import Path

import torch

from fpn.data import load_dataset
from fpn.detection import FasterRCNN
from fpn.detection.checkpoint import load_detector
from fpn.engine.evaluate import TILED_MAX_DETECTIONS, coco_metrics, predict
from fpn.engine.tiling import TileOptions, run_tiles, tile_grid
from fpn.presets import preset


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def throughput(model: FasterRCNN, image: torch.Tensor, tiles: torch.Tensor, batch: int, rounds: int) -> dict:
    """Tiles per second of each round, batched and single, alternating (batched first in even rounds)."""
    rates: dict[str, list[float]] = {"batched": [], "single": []}
    with torch.inference_mode():
        run_tiles(model, image, tiles[:batch], batch)  # warm-up
        for r in range(rounds):
            for name in ("batched", "single") if r % 2 == 0 else ("single", "batched"):
                start = time.perf_counter()
                run_tiles(model, image, tiles, batch if name == "batched" else 1)
                rates[name].append(len(tiles) / (time.perf_counter() - start))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-fpn", help="model for the throughput rounds without --weights")
    p.add_argument("--weights", help="a trained checkpoint: also measure AP whole vs tiled")
    p.add_argument("--tile", type=int, default=320)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--tile-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tiles", type=int, default=48, help="tiles of the first scene timed per round")
    p.add_argument("--output", default=f"benchmarks/results/tiling_{datetime.date.today()}.md")
    args = p.parse_args()

    val = load_dataset("synthetic-large", "val")
    if args.weights:
        model, _ = load_detector(args.weights)
    else:
        torch.manual_seed(0)
        model = FasterRCNN(preset(args.preset))
    model.eval().optimize_for_inference(torch.float32)
    image = val[0][0]
    tiles = tile_grid(image.shape[-2], image.shape[-1], args.tile, args.overlap)[: args.max_tiles]
    rates = throughput(model, image, tiles, args.tile_batch, args.rounds)
    best = {k: max(v) for k, v in rates.items()}
    lines = [
        f"# Tiled detection, {datetime.date.today()}",
        "",
        f"Command: `.venv/bin/python benchmarks/tiling.py {' '.join(__import__('sys').argv[1:])}`",
        "",
        f"CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}; model: "
        f"{args.weights or args.preset + ' (untrained, deterministic seed 0)'}; tile {args.tile} px, overlap "
        f"{args.overlap}, {len(tiles)} tiles of a {image.shape[-1]}x{image.shape[-2]} px scene per round.",
        "",
        "| run | tiles/s per round | best |",
        "|---|---|---|",
        *(f"| {k} | {', '.join(f'{v:.2f}' for v in vs)} | {best[k]:.2f} |" for k, vs in rates.items()),
        "",
        f"Batched ({args.tile_batch} tiles) / single: {best['batched'] / best['single']:.2f}x (best rounds).",
    ]
    if args.weights:
        gt = val.coco_ground_truth()
        model.roi_heads.config.detections_per_image = TILED_MAX_DETECTIONS
        whole = coco_metrics(gt, predict(model, val, batch_size=1), max_detections=TILED_MAX_DETECTIONS)
        options = TileOptions(args.tile, args.overlap, args.tile_batch)
        tiled = coco_metrics(gt, predict(model, val, batch_size=1, tiling=options), TILED_MAX_DETECTIONS)
        lines += ["", "| pass | AP | APs | AP50 |", "|---|---|---|---|"]
        for name, m in (("whole image", whole), ("tiled", tiled)):
            lines.append(f"| {name} | {m['AP']} | {m['APs']} | {m['AP50']} |")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
