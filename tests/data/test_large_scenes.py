"""The large-scene set: sizes as promised, deterministic, cached, and selectable as ``synthetic-large``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fpn.data import spec as spec_module
from fpn.data.coco import read_json
from fpn.data.large_scenes import LargeScenesConfig, make_large_scenes, render_scene
from fpn.data.spec import load_dataset
from fpn.errors import DataError

SMALL = LargeScenesConfig(num_train=3, num_val=2, train_side=256, min_side=600, max_side=900, cell=64)


def test_scene_objects_are_small_boxes_inside_the_scene():
    image, objects = render_scene(np.random.default_rng(0), 700, 1000, SMALL)
    assert image.size == (1000, 700) and objects
    for (x1, y1, x2, y2), label in objects:
        assert 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 700 and 1 <= label <= 5
        side = ((x2 - x1) * (y2 - y1)) ** 0.5
        assert 4 <= side <= 45  # 6-40 px, rounded to whole pixels with an aspect ratio


def test_generated_deterministic_and_cached(tmp_path: Path):
    first = make_large_scenes(tmp_path / "a", SMALL)
    again = make_large_scenes(tmp_path / "b", SMALL)
    val_a, val_b = read_json(first.parent / "val.json"), read_json(again.parent / "val.json")
    assert val_a == val_b
    sizes = [(im["width"], im["height"]) for im in val_a["images"]]
    assert all(600 <= side <= 900 for size in sizes for side in size)
    assert {(im["width"], im["height"]) for im in read_json(first.parent / "train.json")["images"]} == {(256, 256)}
    assert (first.parent / "val" / "000001.jpg").read_bytes() == (again.parent / "val" / "000001.jpg").read_bytes()
    stamp = (first.parent / "manifest.json").stat().st_mtime_ns
    assert make_large_scenes(tmp_path / "a", SMALL) == first
    assert (first.parent / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated


def test_selectable_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FPN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(spec_module.BUILTIN, "synthetic-large", lambda cache: make_large_scenes(cache / "large", SMALL))
    val = load_dataset("synthetic-large", "val")
    assert len(val) == 2


def test_bad_parameters_and_foreign_folders(tmp_path: Path):
    with pytest.raises(DataError, match="min_size"):
        make_large_scenes(tmp_path / "x", LargeScenesConfig(max_size=200.0))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("a user's file")
    with pytest.raises(DataError, match="not a synthetic data set cache"):
        make_large_scenes(tmp_path / "mine", SMALL)
