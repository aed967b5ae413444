"""Argument types shared by the subcommands (not a subcommand itself).

A bad value is refused by argparse, before any work, with the flag's name and the rule it breaks
(``fpn detect: error: argument --score-thresh: must be a number from 0 to 1, got '1.5'``), exit status 2.
"""

from __future__ import annotations

import argparse
import math


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
