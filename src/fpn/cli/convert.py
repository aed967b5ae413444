"""``fpn convert SRC --to coco|yolo|voc --output DIR``: a dataset written in another format, every split of it.

SRC is anything ``--data`` takes: a dataset YAML (format: coco, voc or yolo), an Ultralytics data.yaml as
Ultralytics, Roboflow, CVAT or Label Studio export it, or a built-in name. DIR gets the target layout and a
data.yaml that ``fpn train --data DIR/data.yaml`` reads (for yolo, an Ultralytics data.yaml that Ultralytics
reads too):

  coco   DIR/<split>.json, images in DIR/<split>/
  yolo   DIR/images/<split>/, labels in DIR/labels/<split>/ (an empty file for an image without objects)
  voc    DIR/<split>/ with Annotations/, JPEGImages/, ImageSets/Main/<split>.txt

What is written is the dataset as training reads it (boxes clipped to the image, zero-size boxes and repeated
YOLO lines dropped, unreadable images left out with a warning; --strict stops instead). Class names keep their
order. YOLO classes are 0..K-1 in category-id order; COCO category ids that are not 1..K are kept in the YOLO
data.yaml's category_ids (Ultralytics ignores it) and come back in a conversion to COCO; VOC keeps names only.
YOLO cannot hold crowd or difficult objects: they are left out, and counted. YOLO numbers are written with 10
decimals: YOLO -> COCO -> YOLO gives back every number to its 10th decimal, COCO -> YOLO -> COCO every box to
2e-10 of the image side; VOC coordinates are written to 0.01 px.

The source is never written to: images are copied (--link hard-links them instead, where the disk allows: no
space used, but an output image edited in place then changes the source too). The output is built in a hidden
folder beside DIR and renamed into place when complete, so a failed run leaves nothing half-written. A non-empty
DIR is refused unless --force, which replaces it once the new one is complete; a DIR that holds, or is inside,
the source's files is refused even with --force.
"""

from __future__ import annotations

import argparse

from fpn.data.writers import TARGETS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a dataset between COCO, YOLO and VOC",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SRC", help="dataset YAML, Ultralytics data.yaml or built-in name (synthetic)")
    p.add_argument("--to", required=True, choices=TARGETS, help="the format to write")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace DIR if it is not empty")
    p.add_argument("--link", action="store_true", help="hard-link the images instead of copying them")
    p.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of leaving it out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fpn.data.convert import convert

    result = convert(args.source, args.to, args.output, force=args.force, link=args.link, strict=args.strict)
    for split, written in result.splits.items():
        left_out = f", {written.left_out} crowd objects left out" if written.left_out else ""
        print(f"{split}: {written.images} images, {written.objects} objects{left_out}")
    print(f"{args.to} dataset -> {result.output}; use it with --data {result.data_yaml}")
    return 0
