"""Several seeds per design (``fpn compare --seeds N``): each metric's mean and spread, and which differences
between designs exceed that spread, said plainly.

The spread of a metric is its range over the seeds, ``min..max`` (not a standard deviation: with two or three
seeds a range is what was measured). Two designs differ beyond the seed-to-seed spread in a metric when their
ranges do not overlap: every seed of one scored above every seed of the other. That is a low bar with few
seeds and says nothing about effects smaller than the spread; a difference within it is not shown to exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Summary = dict[str, Any]  # {"mean", "min", "max", "values"}


def summarise(values: Sequence[float | None]) -> Summary | None:
    """Mean and range of one metric over the seeds; None when any seed has no value (e.g. AP undefined)."""
    if not values or any(v is None for v in values):
        return None
    numbers = [float(v) for v in values]
    return {"mean": sum(numbers) / len(numbers), "min": min(numbers), "max": max(numbers), "values": numbers}


def beyond_spread(a: Summary | None, b: Summary | None) -> bool:
    """Whether ``a`` and ``b`` differ beyond the seed-to-seed spread: both measured over two or more seeds,
    their ranges disjoint."""
    if a is None or b is None or min(len(a["values"]), len(b["values"])) < 2:
        return False
    return a["min"] > b["max"] or a["max"] < b["min"]


def _cell(summary: Summary) -> str:
    return f"{summary['mean']:.1f} ({summary['min']:.1f}-{summary['max']:.1f})"


def differences(
    spreads: Mapping[str, Mapping[str, Summary | None]], reference: str | None, metrics: Sequence[str], seeds: int
) -> list[str]:
    """Lines saying, design by design against ``reference`` (every pair when it is not compared), in which
    metrics the difference exceeds the seed-to-seed spread and in which it does not."""
    if seeds < 2:
        return [
            "One seed per design: no seed-to-seed spread was measured, so no difference in this table can be told "
            "apart from the noise of training with another seed. Run with `--seeds 2` or more."
        ]
    designs = list(spreads)
    if reference in spreads:
        pairs = [(design, reference) for design in designs if design != reference]
    else:
        pairs = [(a, b) for i, a in enumerate(designs) for b in designs[i + 1 :]]
    lines = [
        f"{seeds} seeds per design; the spread is the range (min-max) over the seeds. A difference exceeds it when "
        "every seed of one design scored above every seed of the other."
    ]
    for design, other in pairs:
        beyond, within = [], []
        for metric in metrics:
            a, b = spreads[design].get(metric), spreads[other].get(metric)
            if a is None or b is None:
                continue
            if beyond_spread(a, b):
                word = "higher" if a["mean"] > b["mean"] else "lower"
                beyond.append(f"{metric} {word}: {_cell(a)} vs {_cell(b)}")
            else:
                within.append(metric)
        if beyond:
            text = f"`{design}` vs `{other}`: beyond the spread in " + "; ".join(beyond)
            text += f". Within it: {', '.join(within)}." if within else "."
        else:
            text = f"`{design}` vs `{other}`: no difference exceeds the seed-to-seed spread ({', '.join(within)})."
        lines.append(text)
    return lines
