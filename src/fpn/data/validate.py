"""Checks shared by the annotation readers: box sanitising and its one-line summary.

Real annotation files contain boxes with zero or negative size and boxes that stick out of the image. Neither
should stop training, and neither should reach the loss (a zero-size box has an undefined regression target;
a box outside the image can never be matched by an anchor inside it). Readers therefore drop or clip them and
report the counts once per dataset through :mod:`logging`, instead of once per box.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fpn.errors import DataError

logger = logging.getLogger("fpn.data")


def _boxes(count: int) -> str:
    return "1 box" if count == 1 else f"{count} boxes"


@dataclass
class BoxReport:
    """Counts of the boxes a reader changed, summarised in one log line by :meth:`log`."""

    dropped_empty: int = 0
    dropped_outside: int = 0
    clipped: int = 0

    def summary(self, source: str) -> str | None:
        """The summary line, or ``None`` when every box was fine."""
        parts = []
        if self.dropped_empty:
            parts.append(f"dropped {_boxes(self.dropped_empty)} with zero or negative size")
        if self.dropped_outside:
            parts.append(f"dropped {_boxes(self.dropped_outside)} entirely outside the image")
        if self.clipped:
            parts.append(f"clipped {_boxes(self.clipped)} to the image")
        return f"{source}: {', '.join(parts)}" if parts else None

    def log(self, source: str) -> None:
        """Log the summary as a warning (it is about the user's data), if there is anything to say."""
        line = self.summary(source)
        if line is not None:
            logger.warning(line)


def clean_boxes(boxes: np.ndarray, width: int, height: int, report: BoxReport) -> tuple[np.ndarray, np.ndarray]:
    """Drop boxes of zero or negative size, clip the rest to the image, drop those left empty.

    ``boxes`` is ``[N, 4]`` xyxy in pixels. Returns the kept boxes (float64, so that a box keeps the exact value
    its file gives and ``fpn convert`` can write it back unchanged; targets are cast to float32) and the boolean
    mask of kept input rows, so callers can select the matching labels and flags. Counts go into ``report``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    report.dropped_empty += int((~valid).sum())
    clipped = boxes.copy()
    np.clip(clipped[:, 0::2], 0.0, float(width), out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0.0, float(height), out=clipped[:, 1::2])
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    report.dropped_outside += int((valid & ~inside).sum())
    keep = valid & inside
    changed = np.any(clipped != boxes, axis=1)
    report.clipped += int((keep & changed).sum())
    return clipped[keep], keep


def as_number(value: Any, source: str, what: str) -> float:
    """``value`` as a finite float, or a DataError naming ``source`` and ``what`` (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{source}: {what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise DataError(f"{source}: {what} must be finite, got {value!r}")
    return number


def as_positive_int(value: Any, source: str, what: str) -> int:
    """``value`` as a positive integer (``640`` or ``640.0``), or a DataError naming ``source`` and ``what``."""
    number = as_number(value, source, what)
    if number <= 0 or number != int(number):
        raise DataError(f"{source}: {what} must be a positive integer, got {value!r}")
    return int(number)
