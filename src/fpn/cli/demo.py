"""``fpn demo``: the main job on built-in data, end to end on a CPU in a few minutes.

1. generates (or reuses) the synthetic set: five shape/texture classes, objects from 8 to 224 px;
2. trains the ``tiny-fpn`` preset (ResNet-18 at 1/4 width, GroupNorm, from scratch) on it;
3. evaluates it on the val split with COCO's metrics (AP, APs/APm/APl, per-level table);
4. draws detections on a few val images, coloured by the pyramid level that found them, and the
   pyramid maps of one image.

Everything lands in one run folder, whose path is printed last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fpn.cli.options import add_score_thresh
from fpn.cli.train import first_free
from fpn.engine.config import DEMO_ITERS, demo_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train and evaluate a small FPN on the built-in data", description=__doc__)
    p.add_argument("--out", help="run folder (default: runs/demo, numbered if it exists)")
    p.add_argument("--iters", type=int, default=DEMO_ITERS, help="training iterations (default: %(default)s)")
    p.add_argument("--design", default="fpn", help="pyramid design to train (default: %(default)s)")
    p.add_argument("--pictures", type=int, default=6, help="val images to draw detections on (default: %(default)s)")
    add_score_thresh(p, "detections drawn at least this confident (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fpn.data import load_dataset
    from fpn.data.images import open_image, pil_to_tensor
    from fpn.detection.checkpoint import load_detector
    from fpn.engine.train import train
    from fpn.viz.features import pyramid_figure
    from fpn.viz.show import counts_table, detections_by_level, inspect_image

    out = Path(args.out) if args.out else first_free(Path("runs") / "demo")
    config = demo_config(args.iters, args.design)
    print(f"fpn demo: training {config.model.pyramid.design} (tiny-fpn) on the synthetic set -> {out}", flush=True)
    model_path = train(config, out, progress=True)
    metrics = json.loads((out / "metrics.json").read_text())
    model, _ = load_detector(model_path)

    # Pictures: confident detections on a few val images, coloured by the level that found them.
    model.output_config.score_thresh = args.score_thresh
    val = load_dataset("synthetic", "val")
    pictures = out / "pictures"
    pictures.mkdir(exist_ok=True)
    paths = [val.root / record.file_name for record in val.records[: args.pictures]]
    for path in paths:
        image = open_image(path)
        inspection = inspect_image(model, pil_to_tensor(image))
        detections_by_level(image, inspection, model).save(pictures / f"{path.stem}_levels.png")
    image = open_image(paths[0])
    inspection = inspect_image(model, pil_to_tensor(image))
    pyramid_figure(image, inspection.bottom_up, inspection.pyramid, inspection.resized).savefig(
        out / "pyramid_maps.png", dpi=100
    )

    m = metrics.get("metrics", metrics)
    print(
        f"\nval AP {m['AP']:.1f}  AP50 {m['AP50']:.1f}  APs {_fmt(m['APs'])}  APm {_fmt(m['APm'])}  "
        f"APl {_fmt(m['APl'])}  AR100 {m['AR100']:.1f}"
    )
    print(f"\nper-level counts for {paths[0].name}:\n{counts_table(inspection.counts)}")
    print(f"run folder: {out}  (metrics.json, curves.png, pictures/, pyramid_maps.png, model.pt)")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
