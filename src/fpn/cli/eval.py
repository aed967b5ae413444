"""``fpn eval --weights W --data D``: COCO AP/AR of a checkpoint on a dataset split, and which levels detect what.

Classes are matched by name; dataset classes the model lacks are named in a warning (they score 0 AP).
--output holds the metrics, the per-level table (keys "p2", "p3", ...), classes_not_in_model and
best_score_threshold (where F1 at IoU 0.5 is highest; ``fpn detect`` suggests it for weights with a
metrics.json beside them); beside it go curves.json (the plots' numbers) and the plots: pr_curves.png,
f1_curve.png, confusion_matrix.png, val_grid.png (see ``fpn.viz.eval_plots``; --no-plots leaves them out).
--detections the detections in COCO's results format plus each one's pyramid "level" ("p3").

--tile PX evaluates tiled detection: each image cut into overlapping tiles of its native pixels, detections
merged in the original image's coordinates (each records its "tile"), scored with COCO's per-image cap
raised from 100 to 1000 detections (large scenes hold hundreds of objects):
``fpn eval --weights W --data synthetic-large --tile 512``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fpn.cli.options import add_tile_options, tile_options
from fpn.data import load_dataset
from fpn.device import resolve_device
from fpn.engine.eval_curves import CURVES_FILE, save_curves
from fpn.engine.evaluate import evaluate, format_metrics, format_per_level
from fpn.errors import ConfigError
from fpn.export.runtime import load_model
from fpn.io import atomic_write_text, check_writable
from fpn.viz.eval_plots import write_eval_plots


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint (COCO AP)", description=__doc__)
    p.add_argument("--weights", required=True, help="checkpoint: RUN/model.pt or torchvision's fasterrcnn .pth")
    p.add_argument("--data", required=True, help="dataset YAML or built-in name (synthetic)")
    p.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    p.add_argument("--output", help="write metrics and the per-level table as JSON to this file (default: not written)")
    p.add_argument(
        "--detections", help="also write the detections (COCO results format + level) as JSON (default: not written)"
    )
    p.add_argument(
        "--no-plots", action="store_true", help="write no curves.json and plots beside --output (default: written)"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of leaving it out")
    add_tile_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    for path in (args.output, args.detections):
        if path:
            check_writable(path)  # before the evaluation, which can take a while
    tiling = tile_options(args)
    device = resolve_device(args.device)
    dataset = load_dataset(args.data, args.split, strict=args.strict)
    model = load_model(args.weights)  # a .onnx file (fpn export) runs in onnxruntime
    model.to(device)
    result = evaluate(
        model, dataset, batch_size=args.batch_size, device=device, progress=sys.stderr.isatty(), tiling=tiling
    )
    print(
        f"{args.weights} on {args.data} ({args.split}, {len(dataset)} images, {len(result['detections'])} detections)"
    )
    print(format_metrics(result["metrics"]))
    print()
    print(format_per_level(result["per_level"]))
    best = result["best_score_threshold"]
    if best is not None:
        point = result["curves"]["f1"]["best"]
        print(f"\nbest score threshold {best:.2f} (mean F1 {point['f1']:.3f} at IoU 0.5)")
    if args.output:
        payload = {
            "weights": str(args.weights),
            "data": str(args.data),
            "split": args.split,
            "tile": None
            if tiling is None
            else {
                "size": tiling.size,
                "overlap": tiling.overlap,
                "merge": tiling.merge,
                "full_image": tiling.full_image,
            },
            "images": result["images"],
            "metrics": result["metrics"],
            "per_level": result["per_level"],
            "classes_not_in_model": result["classes_not_in_model"],
            "best_score_threshold": best,
        }
        atomic_write_text(json.dumps(payload, indent=2) + "\n", args.output)
        print(f"metrics -> {args.output}")
        if not args.no_plots and result["curves"] is not None:
            folder = Path(args.output).parent
            save_curves(result["curves"], folder)
            plots = write_eval_plots(result["curves"], folder, dataset)
            print(f"plots -> {folder}: {CURVES_FILE}, {', '.join(path.name for path in plots)}")
    if args.detections:
        # One detection per line: readable, diffable, and still a single JSON list.
        lines = ",\n".join(json.dumps(d) for d in result["detections"])
        atomic_write_text(f"[\n{lines}\n]\n" if lines else "[]\n", args.detections)
        print(f"detections -> {args.detections}")
    return 0
