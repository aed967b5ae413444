"""Argument types shared by the subcommands (not a subcommand itself).

A bad value is refused by argparse, before any work, with the flag's name and the rule it breaks
(``fpn detect: error: argument --score-thresh: must be a number from 0 to 1, got '1.5'``), exit status 2.
"""

from __future__ import annotations

import argparse
import math

from fpn.engine.tiling import TileOptions
from fpn.errors import ConfigError


def fraction(text: str) -> float:
    """A number from 0 to 1, such as a score threshold: outside that range it would keep all or nothing."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def add_score_thresh(parser: argparse.ArgumentParser, help: str, default: float = 0.5) -> None:
    """``--score-thresh`` as every command spells it: a score from 0 to 1."""
    parser.add_argument("--score-thresh", type=fraction, default=default, metavar="0..1", help=help)


def iou(text: str) -> float:
    """An IoU threshold above 0 and at most 1: at 0 any overlap would suppress a box, above 1 none could."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most 1, got {text!r}")
    return value


def whole_number(minimum: int, unit: str = ""):
    """An argparse type: a whole number of at least ``minimum`` (``unit`` names what it counts, in errors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {minimum}{unit}, got {text!r}")
        return value

    return parse


def overlap(text: str) -> float:
    """A tile overlap: a fraction of the tile from 0 up to, not including, 1 (at 1 the tiles could not step)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number from 0 up to (not including) 1, got {text!r}")
    return value


def add_tile_options(parser: argparse.ArgumentParser) -> None:
    """``--tile SIZE`` and its companions, as ``fpn detect`` and ``fpn eval`` spell them (see fpn.engine.tiling)."""
    group = parser.add_argument_group("tiled detection (small objects in large images)")
    group.add_argument(
        "--tile",
        type=whole_number(32, " px"),
        metavar="PX",
        help="detect in overlapping PX x PX tiles of the image's native pixels, each resized by the model as an "
        "image (native scale when PX is the model's --size), and merge them (default: the whole image at once)",
    )
    group.add_argument(
        "--overlap",
        type=overlap,
        default=0.2,
        metavar="0..1",
        help="neighbouring tiles share at least this fraction of a tile's side (default: %(default)s)",
    )
    group.add_argument(
        "--tile-batch",
        type=whole_number(1),
        default=4,
        metavar="N",
        help="tiles run through the model together; memory grows with N, not with the image (default: %(default)s)",
    )
    group.add_argument(
        "--merge",
        choices=("greedy", "nms"),
        default="greedy",
        help="across tiles: greedy fuses the pieces of a box cut by a tile border into their union (intersection "
        "over the smaller box above 0.5); nms keeps the best of boxes overlapping by IoU above 0.5 and so may keep "
        "both pieces (default: %(default)s)",
    )
    group.add_argument(
        "--full-image",
        action="store_true",
        help="with --tile, also run the whole image once, for objects too large for a tile (default: tiles only)",
    )


def tile_options(args: argparse.Namespace) -> TileOptions | None:
    """The :class:`fpn.engine.tiling.TileOptions` the flags ask for, or None without --tile."""
    if args.tile is None:
        if args.full_image:
            raise ConfigError("--full-image needs --tile SIZE (the whole image is the default pass)")
        return None
    return TileOptions(args.tile, args.overlap, args.tile_batch, args.merge, full_image=args.full_image)
