"""FCOS through ``fpn.cli.main``: ``train --model tiny-fcos`` on images of 400-1000 px, then ``eval`` (the per-level
table), ``detect`` (optimized and plain paths alike, bf16), ``show`` and ``bench`` on the result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from realsize import BOX_TOL, SCORE_TOL, assert_same_detections

from fpn.cli import main

_spec = importlib.util.spec_from_file_location("real_path", Path(__file__).parents[1] / "cli" / "test_real_path.py")
real_path = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_path)


def fpn(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> Path:
    sizes = [(400, 600), (750, 1000), (480, 640), (1000, 667)]
    return real_path.write_coco(tmp_path_factory.mktemp("coco"), sizes, {1: "person", 3: "car"}, seed=7)


@pytest.fixture(scope="module")
def trained(photo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    assert fpn("train", "--data", photo_data, "--model", "tiny-fcos", "--iters", 3, "--out", out, "workers=0") == 0
    return out


def test_train_writes_an_fcos_model_and_eval_gives_the_per_level_table(trained, photo_data, tmp_path):
    from fpn.io import read_state_dict

    assert read_state_dict(trained / "model.pt")["config"]["detector"] == "fcos"
    output = tmp_path / "metrics.json"
    code = fpn("eval", "--weights", trained / "model.pt", "--data", photo_data, "--output", output, "--no-plots")
    assert code == 0
    metrics = json.loads(output.read_text())
    assert "AP" in metrics["metrics"]
    assert "per_level" in metrics


def test_detect_fast_and_plain_paths_alike_and_bf16(trained, photo_data, tmp_path):
    images = photo_data.parent / "images"
    runs = {}
    for name, flags in {"default": [], "direct-conv": ["--direct-conv"], "bf16": ["--precision", "bf16"]}.items():
        runs[name] = tmp_path / f"{name}.json"
        code = fpn("detect", images, "--weights", trained / "model.pt", "--output", runs[name], "--score-thresh", 0,
                   "--set", "fcos.score_thresh=0.05", *flags)  # fmt: skip
        assert code == 0
    fast, plain = real_path.read_detections(runs["default"]), real_path.read_detections(runs["direct-conv"])
    assert len(fast) == 4 and fast.keys() == plain.keys()
    assert sum(len(v) for v in fast.values()) > 0
    for key in fast:
        ours, theirs = real_path.as_tensors(fast[key]), real_path.as_tensors(plain[key])
        assert_same_detections(ours, theirs, BOX_TOL + 0.01, SCORE_TOL + 1e-5)
    levels = {r["level"] for records in fast.values() for r in records}
    assert levels and levels <= {"p3", "p4", "p5", "p6"}
    assert len(real_path.read_detections(runs["bf16"])) == 4


def test_show_and_bench(trained, photo_data, tmp_path, capsys):
    model = trained / "model.pt"
    image = next((photo_data.parent / "images").iterdir())
    assert fpn("show", "--weights", model, image, "--out", tmp_path / "show", "--score-thresh", 0.05) == 0
    output = tmp_path / "bench.json"
    code = fpn("bench", "--weights", model, "--size", "320x480", "--runs", 1, "--warmup", 0, "--no-memory",
               "--peak-gflops", 100, "--output", output)  # fmt: skip
    assert code == 0
    assert {"head", "decoder"} <= set(json.loads(output.read_text())["stages"])
    assert "Traceback" not in capsys.readouterr().err


def test_anchors_gives_the_levels_object_bands_and_a_tile(trained, photo_data, tmp_path, capsys):
    # FCOS has no anchors: fpn anchors measures the objects against the sizes each level's distances serve
    # (twice the regressed range: a centred location of a square of side s regresses s / 2).
    out = tmp_path / "fit.png"
    assert fpn("anchors", "--data", photo_data, "--weights", trained / "model.pt", "--out", out) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.with_suffix(".json").read_text())
    assert out.is_file() and summary["anchor_sizes"] == []
    assert summary["roi_levels"]["p3"] == [0.0, 64.0] and summary["roi_levels"]["p4"] == [64.0, 128.0]
    assert summary["roi_levels"]["p6"][1] == float("inf") and "p7" not in summary["roi_levels"]  # tiny-fcos: P3-P6
    assert "anchor-free" in printed and "object sizes per level" in printed and "suggested:" in printed
