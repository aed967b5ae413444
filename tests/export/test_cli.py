"""fpn export and fpn detect --weights model.onnx through fpn.cli.main, at users' sizes; one-line errors."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
import torch.nn.functional as F
from onnx_models import golden_images, spread_model
from PIL import Image

from fpn.cli import main
from fpn.detection.checkpoint import save_detector


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A micro-fpn checkpoint and four photo-sized images of 400-1000 px. (Not tiny-fpn, the default preset: with
    seeded weights its scores are chaotic enough that float rounding between runtimes moves boxes 0.05 px and
    tips detections over thresholds; the real-size tier runs r50's realistic weights.)"""
    root = tmp_path_factory.mktemp("world")
    save_detector(spread_model(), root / "model.pt")
    sizes = [(400, 533), (1000, 750), (613, 817), (480, 640)]
    for i, (image, size) in enumerate(zip(golden_images() * 2, sizes)):
        pixels = F.interpolate(image[None], size=size, mode="bilinear")[0].clamp(0, 1)
        Image.fromarray((pixels * 255).round().byte().permute(1, 2, 0).numpy()).save(root / f"img{i}.png")
    return root


def detections(path) -> dict[str, list[dict]]:
    records = json.loads(path.read_text())["detections"]
    return {name: [r for r in records if r["file_name"] == name] for name in {r["file_name"] for r in records}}


def test_export_then_detect(world, tmp_path, capsys):
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(world / "model.pt"), "--output", str(onnx_file), "--dynamic-size"]) == 0
    assert "checked against PyTorch in onnxruntime" in capsys.readouterr().out
    images = sorted(str(p) for p in world.glob("*.png"))
    assert main(["detect", *images, "--weights", str(world / "model.pt"), "--output", str(tmp_path / "pt.json"),
                 "--score-thresh", "0.3"]) == 0  # fmt: skip
    assert main(["detect", *images, "--weights", str(onnx_file), "--output", str(tmp_path / "onnx.json"),
                 "--score-thresh", "0.3", "--save-images", str(tmp_path / "pictures")]) == 0  # fmt: skip
    ours, theirs = detections(tmp_path / "onnx.json"), detections(tmp_path / "pt.json")
    assert ours.keys() == theirs.keys() and sum(map(len, theirs.values())) > 10
    for name in theirs:
        assert len(ours[name]) == len(theirs[name])
        boxes = torch.tensor([r["bbox"] for r in ours[name]])
        their_boxes = torch.tensor([r["bbox"] for r in theirs[name]])
        # Records are rounded to 0.01 px and 1e-5; micro-fpn sees a 1000 px image at 96 px (10x the 0.01 px).
        nearest = torch.cdist(boxes, their_boxes, p=float("inf")).min(dim=1)
        assert nearest.values.max() <= 0.12
        for mine, index in zip(ours[name], nearest.indices.tolist()):
            assert mine["category"] == theirs[name][index]["category"] and mine["level"] == theirs[name][index]["level"]
            assert abs(mine["score"] - theirs[name][index]["score"]) <= 1.2e-4
    assert len(list((tmp_path / "pictures").glob("*.jpg"))) == len(images)


def test_one_line_errors(world, tmp_path, capsys):
    image = str(next(world.glob("*.png")))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all" * 10)
    assert main(["detect", image, "--weights", str(corrupt), "--output", str(tmp_path / "d.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"fpn: error: {corrupt}: not a readable ONNX model") and "\n" not in error
    assert main(["detect", image, "--weights", str(corrupt), "--set", "roi_heads.nms_thresh=0.3"]) == 2
    assert "fixed at export" in capsys.readouterr().err
    assert main(["export", "--weights", str(corrupt)]) == 2
    assert "already an ONNX file" in capsys.readouterr().err


def test_without_onnxruntime(world, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert main(["export", "--weights", str(world / "model.pt"), "--output", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "fpn: error: fpn export needs onnx and onnxruntime: pip install 'fpn[onnx]'"
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["detect", str(next(world.glob("*.png"))), "--weights", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'fpn[onnx]'" in capsys.readouterr().err


def test_eval_runs_the_file(tmp_path, capsys):
    """fpn eval --weights model.onnx: the PyTorch checkpoint's metrics (same detections to rounding)."""
    from fpn.data import make_synthetic

    data = make_synthetic(tmp_path / "set", num_train=1, num_val=3, image_size=160)
    model = spread_model(score_thresh=0.0)
    model.config.class_names = ["ring", "cross", "triangle", "striped_square", "checker_disc"][:1]
    save_detector(model, tmp_path / "model.pt")
    assert main(["export", "--weights", str(tmp_path / "model.pt"), "--output", str(tmp_path / "m.onnx"),
                 "--dynamic-size"]) == 0  # fmt: skip
    metrics = {}
    for weights in ("model.pt", "m.onnx"):
        out = tmp_path / f"{weights}.json"
        assert main(["eval", "--weights", str(tmp_path / weights), "--data", str(data), "--output", str(out)]) == 0
        metrics[weights] = json.loads(out.read_text())["metrics"]
    capsys.readouterr()
    for key, value in metrics["model.pt"].items():
        if isinstance(value, float):
            assert abs(metrics["m.onnx"][key] - value) <= 0.05, key


def test_bench_times_the_file_in_onnxruntime(world, tmp_path, capsys):
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(world / "model.pt"), "--output", str(onnx_file), "--dynamic-size"]) == 0
    out = tmp_path / "bench.json"
    code = main(["bench", "--weights", str(onnx_file), "--size", "480x640", "--runs", "3", "--warmup", "1",
                 "--batch", "2", "--threads", "1", "--output", str(out)])  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    assert record["runtime"] == "onnxruntime" and record["size"] == "480x640" and record["batch"] == 2
    assert record["runs"] == 3 and 0 < record["min_s"] <= record["median_s"] <= record["max_s"]
    assert "in onnxruntime" in capsys.readouterr().out
    assert main(["bench", "--weights", str(onnx_file), "--mode", "train", "--output", str(tmp_path / "t.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert str(onnx_file) in error and "--mode train" in error and "\n" not in error
