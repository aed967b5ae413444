"""Training tiles: boxes clipped and dropped at the border, tiles inside the image, objects favoured, the same
tiles from the same seed, and `fpn train --tile` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fpn.cli import main
from fpn.data import spec as spec_module
from fpn.data.large_scenes import LargeScenesConfig, make_large_scenes
from fpn.data.spec import load_dataset
from fpn.data.tiles import TiledDataset, crop_boxes, tile_origin
from fpn.errors import ConfigError

SCENES = LargeScenesConfig(num_train=2, num_val=1, train_side=384, min_side=512, max_side=576, cell=64)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_large_scenes(tmp_path_factory.mktemp("large") / "large", SCENES)


def test_a_box_mostly_outside_is_dropped_a_box_mostly_inside_clipped():
    tile = (100, 100, 200, 200)
    boxes = torch.tensor(
        [
            [70.0, 120.0, 120.0, 150.0],  # 50 px wide, 20 (40 %) inside: 60 % outside, dropped
            [165.0, 120.0, 215.0, 150.0],  # 50 px wide, 15 (30 %) outside: kept, clipped
            [120.0, 120.0, 140.0, 140.0],  # whole, kept as it is
            [300.0, 300.0, 320.0, 320.0],  # elsewhere, dropped
        ]
    )
    cut, keep = crop_boxes(boxes, tile, min_visible=0.5)
    assert keep.tolist() == [False, True, True, False]
    assert cut.tolist() == [[65.0, 20.0, 100.0, 50.0], [20.0, 20.0, 40.0, 40.0]]


def test_tiles_lie_inside_the_image_whatever_its_size():
    rng = np.random.default_rng(0)
    for height, width in ((1000, 700), (100, 900), (50, 60)):
        boxes = np.array([[0, 0, 10, 10], [width - 5, height - 5, width, height]], np.float32)
        for _ in range(200):
            x0, y0, x1, y1 = tile_origin(rng, height, width, boxes, 256, object_p=0.5)
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert (x1 - x0, y1 - y0) == (min(256, width), min(256, height))


def test_object_tiles_hit_objects_more_often_than_uniform_ones():
    boxes = np.array([[1500.0, 1500.0, 1520.0, 1520.0]], np.float32)

    def hits(object_p: float) -> int:
        rng = np.random.default_rng(1)
        tiles = (tile_origin(rng, 4000, 4000, boxes, 256, object_p=object_p) for _ in range(400))
        return sum(x0 <= 1500 and x1 >= 1520 and y0 <= 1500 and y1 >= 1520 for x0, y0, x1, y1 in tiles)

    assert hits(0.5) > 150 and hits(0.0) < 20


def test_the_same_seed_cuts_the_same_tile(scenes: Path):
    tiled = TiledDataset(load_dataset(scenes, "val"), 128, seed=3)
    (a, ta), (b, tb) = tiled.sample(0, 7), tiled.sample(0, 7)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and a.shape[-2:] == (128, 128)
    assert ta["orig_size"] == (128, 128)
    assert ((ta["boxes"] >= 0) & (ta["boxes"] <= 128)).all()
    assert torch.equal(tiled[0][0], tiled[0][0])
    assert any(not torch.equal(tiled.sample(0, seed)[0], a) for seed in range(8, 12))


def test_a_tile_holds_the_scene_pixels_and_boxes_of_its_place(scenes: Path):
    # Only the tile is converted to float; it must still be the scene's pixels at the tile's place, and its
    # boxes the scene's boxes shifted by the same offset (found by where the tile's pixels lie in the scene).
    dataset = load_dataset(scenes, "val")
    tiled = TiledDataset(dataset, 128, seed=3, min_visible=1.0)
    whole, target = dataset.load_image(0), dataset.target(0)
    for seed in range(4):
        tile, cut = tiled.sample(0, seed)
        hits = [
            (x, y)
            for y in range(whole.shape[1] - 127)
            for x in range(whole.shape[2] - 127)
            if torch.equal(whole[:, y : y + 128, x : x + 128], tile)
        ]
        assert hits, "the tile's pixels are not a 128 px window of the scene"
        x0, y0 = hits[0]
        inside = (target["boxes"][:, :2] >= torch.tensor([x0, y0])).all(1) & (
            target["boxes"][:, 2:] <= torch.tensor([x0 + 128, y0 + 128])
        ).all(1)
        expected = target["boxes"][inside] - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        assert torch.equal(cut["boxes"], expected)


def test_bad_tile_settings_are_one_line():
    dataset = object()
    with pytest.raises(ConfigError, match="train.tile must be"):
        TiledDataset(dataset, 16)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train.tile_min_visible"):
        TiledDataset(dataset, 64, min_visible=0.0)  # type: ignore[arg-type]


def test_train_on_tiles_through_the_cli(scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(spec_module.BUILTIN, "synthetic-large", lambda cache: scenes)
    run = tmp_path / "run"
    argv = ["train", "--data", "synthetic-large", "--model", "micro-fpn", "--tile", "256", "--out", str(run)]
    assert main([*argv, "--iters", "2", "workers=0", "train.batch_size=1", "lr=1e-2"]) == 0
    assert (run / "model.pt").is_file()
    config = (run / "config.yaml").read_text()
    assert "tile: 256" in config and "tile_min_visible: 0.5" in config
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals


def test_train_refuses_a_tile_too_small_in_one_line(tmp_path: Path, capsys):
    argv = ["train", "--data", "synthetic", "--model", "micro-fpn", "--tile", "16", "--out", str(tmp_path / "run")]
    assert main([*argv, "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.tile must be a whole number of at least 32 px" in err[0]


def test_a_resumed_tiled_run_cuts_the_same_tiles(scenes: Path, tmp_path: Path):
    import signal

    from fpn.config import to_dict
    from fpn.engine import build_run_config, train
    from fpn.engine.stop import TrainingInterrupted
    from fpn.io import read_state_dict
    from fpn.presets import preset

    fast = ["train.workers=0", "train.warmup_iters=1", "train.lr=0.01", "train.epochs=null", "train.batch_size=1"]
    base = {"model": to_dict(preset("micro-fpn")), "data": str(scenes)}
    config = build_run_config(base, overrides=[*fast, "train.tile=128", "train.iters=4"])
    whole = train(config, tmp_path / "whole", progress=False)

    def ctrl_c_at_2(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 2:
            signal.raise_signal(signal.SIGINT)  # checkpoints iteration 2 and stops

    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "split", progress=False, on_step=ctrl_c_at_2)
    resumed = train(None, tmp_path / "split", resume=True, progress=False)
    expected, got = read_state_dict(whole)["model"], read_state_dict(resumed)["model"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)
