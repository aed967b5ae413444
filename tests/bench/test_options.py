"""``fpn.bench.options``: the size syntax (bad option values are checked through run_bench in test_run.py)."""

from __future__ import annotations

import pytest

from fpn.bench import parse_size
from fpn.errors import ConfigError


def test_parse_size():
    assert parse_size("800x1216") == (800, 1216)
    for bad in ("800", "800x", "axb", "800x1216x3"):
        with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
            parse_size(bad)
