"""fpn anchors' tile advice: the rule on hand-made sizes, and the command on a set that needs tiling and one that
does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fpn.cli import main
from fpn.data import make_synthetic
from fpn.data import spec as spec_module
from fpn.data.large_scenes import LargeScenesConfig, make_large_scenes
from fpn.viz.anchor_fit import recommend_tile

SMALL = LargeScenesConfig(num_train=3, num_val=2, train_side=256, min_side=600, max_side=900, cell=64)


def test_objects_large_enough_at_the_normal_resize_need_no_tile():
    native = np.full(100, 40.0)
    advice = recommend_tile(native, native * 0.5, image_side=640, min_size=320, smallest_anchor=32)
    assert advice.tile is None and "no tiling needed" in advice.line


def test_tile_brings_the_10th_percentile_to_half_the_smallest_anchor():
    native = np.linspace(8.0, 40.0, 101)  # 10th percentile 11.2 px
    advice = recommend_tile(native, native * 800 / 4000, image_side=4000, min_size=800, smallest_anchor=32)
    # 16 px wanted: scale 16 / 11.2 = 1.43, tile 800 / 1.43 = 560, a multiple of 32 at or under it: 544
    assert advice.tile == 544
    assert advice.reached >= 16 and 11.2 * 800 / (544 + 32) < 16  # the largest tile that gets there
    assert advice.line.startswith("suggested: --tile 544 (objects' 10th percentile 11.2 px -> 16.5 px")
    assert "input scale > 1" in advice.line and "anchors.sizes=[16, ...]" in advice.line


def test_a_tile_above_min_size_means_a_scale_under_one():
    native = np.full(50, 12.0)
    advice = recommend_tile(native, native * 0.1, image_side=3000, min_size=320, smallest_anchor=8)
    assert advice.tile == 960 and advice.scale < 1  # 4 px wanted: scale 1/3 and "input scale > 1" not in advice.line


def test_objects_too_small_for_any_tile_ask_for_smaller_anchors():
    native = np.full(50, 2.0)
    advice = recommend_tile(native, native * 0.2, image_side=2000, min_size=320, smallest_anchor=32)
    assert advice.tile == 96 and advice.reached < 16  # min_size / 4 = 80, a multiple of 32: 96
    assert "smaller anchors" in advice.line and "anchors.sizes=[16, ...]" in advice.line


def test_tile_no_larger_than_the_images():
    native = np.full(50, 30.0)
    advice = recommend_tile(native, native * 0.1, image_side=700, min_size=800, smallest_anchor=32)
    assert advice.tile == 672


def test_no_objects_no_tile():
    assert recommend_tile(np.zeros(0), np.zeros(0), 0, 320, 16).tile is None


def run_anchors(data: str, out: Path, capsys) -> tuple[dict, str]:
    assert main(["anchors", "--data", data, "--model", "micro-fpn", "--out", str(out)]) == 0
    return json.loads(out.with_suffix(".json").read_text()), capsys.readouterr().out


def test_anchors_suggests_a_tile_on_large_scenes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("FPN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(spec_module.BUILTIN, "synthetic-large", lambda cache: make_large_scenes(cache / "large", SMALL))
    summary, printed = run_anchors("synthetic-large", tmp_path / "a.png", capsys)
    tile = summary["suggested_tile"]
    assert tile["tile"] is not None and tile["tile"] % 32 == 0 and 32 <= tile["tile"] <= 256
    assert f"suggested: --tile {tile['tile']}" in printed and tile["why"] in printed


def test_anchors_says_when_no_tile_is_needed(tmp_path: Path, capsys):
    yaml_path = make_synthetic(tmp_path / "syn", num_train=6, num_val=2, image_size=96, seed=1)
    summary, printed = run_anchors(str(yaml_path), tmp_path / "a.png", capsys)
    assert summary["suggested_tile"]["tile"] is None
    assert "suggested: no tiling needed" in printed
