"""``fpn show --weights W IMAGE``: the pyramid's maps, detections by level, and per-level counts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fpn.checkpoints import atomic_write_text, load_detector
from fpn.data.images import open_image, pil_to_tensor
from fpn.viz.features import pyramid_figure
from fpn.viz.show import counts_table, detections_by_level, inspect_image, parse_boxes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("show", help="pictures of the pyramid for one image", description=__doc__)
    p.add_argument("image", help="an image file")
    p.add_argument("--weights", required=True, help="checkpoint: RUN/model.pt or torchvision's fasterrcnn .pth")
    p.add_argument("--out", default="show", help="folder for the pictures and counts (default: %(default)s)")
    p.add_argument("--box", action="append", default=[], metavar="x1,y1,x2,y2", help="a ground-truth box (repeat)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detections drawn at least this confident")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    boxes = parse_boxes(args.box)
    model, _ = load_detector(args.weights)
    model.roi_heads.config.score_thresh = args.score_thresh
    image = open_image(args.image)
    inspection = inspect_image(model, pil_to_tensor(image), boxes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = pyramid_figure(image, inspection.bottom_up, inspection.pyramid, inspection.resized)
    figure.savefig(out / "pyramid_maps.png", dpi=110)
    detections_by_level(image, inspection, model).save(out / "detections_by_level.png")
    atomic_write_text(json.dumps(inspection.counts, indent=2) + "\n", out / "levels.json")
    print(counts_table(inspection.counts))
    print(f"pictures and counts -> {out}/ (pyramid_maps.png, detections_by_level.png, levels.json)")
    return 0
