"""``fpn show --weights W IMAGE``: the pyramid's maps, detections by level, and per-level counts."""

from __future__ import annotations

import argparse
import json

from fpn.cli.options import add_score_thresh
from fpn.data.images import pil_to_tensor
from fpn.detection.checkpoint import load_detector
from fpn.engine.inference import open_named_image
from fpn.errors import ImageError
from fpn.io import atomic_write_text, check_writable
from fpn.viz.features import pyramid_figure
from fpn.viz.save import save_picture
from fpn.viz.show import counts_table, detections_by_level, inspect_image, parse_boxes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("show", help="pictures of the pyramid for one image", description=__doc__)
    p.add_argument("image", help="an image file")
    p.add_argument("--weights", required=True, help="checkpoint: RUN/model.pt or torchvision's fasterrcnn .pth")
    p.add_argument("--out", default="show", help="folder for the pictures and counts (default: %(default)s)")
    p.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="x1,y1,x2,y2",
        help="a ground-truth box, whose positive anchors are counted (repeat; default: none)",
    )
    add_score_thresh(p, "detections drawn at least this confident (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = check_writable(args.out, folder=True)
    boxes = parse_boxes(args.box)
    model, _ = load_detector(args.weights)
    model.output_config.score_thresh = args.score_thresh
    image = open_named_image(args.image)
    try:
        inspection = inspect_image(model, pil_to_tensor(image), boxes)
    except ImageError as exc:  # too thin for the model's resize
        raise ImageError(f"{args.image}: {exc}") from None
    figure = pyramid_figure(image, inspection.bottom_up, inspection.pyramid, inspection.resized)
    save_picture(figure, out / "pyramid_maps.png", dpi=110)
    save_picture(detections_by_level(image, inspection, model), out / "detections_by_level.png")
    atomic_write_text(json.dumps(inspection.counts, indent=2) + "\n", out / "levels.json")
    print(counts_table(inspection.counts))
    print(f"pictures and counts -> {out}/ (pyramid_maps.png, detections_by_level.png, levels.json)")
    return 0
