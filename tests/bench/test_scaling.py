"""``fpn.bench.scaling``: the size fit (the scaling record itself is checked through run_bench in test_run.py)."""

from __future__ import annotations

import pytest

from fpn.bench import linear_fit


def test_linear_fit():
    points = [{"megapixels": x, "median_s": 0.5 + 2 * x} for x in (0.25, 0.5, 1.0)]
    fit = linear_fit(points)
    assert fit["fixed_s"] == pytest.approx(0.5) and fit["s_per_megapixel"] == pytest.approx(2.0)
