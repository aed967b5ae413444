"""RetinaNet through the commands: ``fpn train --model tiny-retinanet`` (from scratch, then fine-tuned), ``eval``
(per-level table), ``detect`` (fast and plain paths alike, bf16), ``show``, ``anchors``, ``bench`` on 400-1000 px
images; and (real tier) ``fpn detect --weights`` torchvision's ``retinanet_resnet50_fpn`` file at 800 px."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli.test_real_path import JSON_BOX_TOL, JSON_SCORE_TOL, as_tensors, read_detections, write_coco
from realsize import assert_same_detections, write_photos
from retinanet_golden import golden, write_torchvision_retinanet

from fpn.cli import main
from fpn.detection.classes import label_mask
from fpn.presets import retinanet_r50


def fpn(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> Path:
    sizes = [(400, 600), (750, 1000), (480, 640), (1000, 667)]
    return write_coco(tmp_path_factory.mktemp("coco"), sizes, {1: "person", 3: "car"}, seed=7)


@pytest.fixture(scope="module")
def trained(photo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    assert fpn("train", "--data", photo_data, "--model", "tiny-retinanet", "--iters", 3, "--out", out, "workers=0") == 0
    return out


def test_train_eval_detect_show_anchors_bench(trained, photo_data, tmp_path, capsys):
    assert (trained / "model.pt").is_file()
    metrics = tmp_path / "metrics.json"
    assert fpn("eval", "--weights", trained / "model.pt", "--data", photo_data, "--output", metrics, "--no-plots") == 0
    assert "level" in capsys.readouterr().out and "per_level" in json.loads(metrics.read_text())

    # Three iterations leave the scores near the prior (0.01): the model's own threshold is lowered to see them.
    images, runs = photo_data.parent / "images", {}
    for name, flags in {"default": [], "direct-conv": ["--direct-conv"], "bf16": ["--precision", "bf16"]}.items():
        runs[name] = tmp_path / f"{name}.json"
        code = fpn("detect", images, "--weights", trained / "model.pt", "--output", runs[name], "--score-thresh", 0,
                   "--max-detections", 50, "--set", "retinanet.score_thresh=0.001", *flags)  # fmt: skip
        assert code == 0
    fast, plain = read_detections(runs["default"]), read_detections(runs["direct-conv"])
    assert len(fast) == 4 and fast.keys() == plain.keys() and len(read_detections(runs["bf16"])) == 4
    for key in fast:
        assert 0 < len(fast[key]) <= 50
        assert {r["level"] for r in fast[key]} <= {"p3", "p4", "p5", "p6", "p7"}
        assert_same_detections(as_tensors(fast[key]), as_tensors(plain[key]), JSON_BOX_TOL, JSON_SCORE_TOL)

    image = next(images.iterdir())
    show = tmp_path / "show"
    assert fpn("show", "--weights", trained / "model.pt", image, "--out", show, "--box", "10,10,90,80") == 0
    levels = json.loads((show / "levels.json").read_text())
    assert list(levels) == ["p3", "p4", "p5", "p6", "p7"]
    assert list(levels["p3"]) == ["anchors", "positive_anchors", "candidates", "detections"]
    assert sum(row["positive_anchors"] for row in levels.values()) > 0

    assert fpn("anchors", "--data", photo_data, "--weights", trained / "model.pt", "--out", tmp_path / "a.png") == 0
    assert "anchor levels" in capsys.readouterr().out

    record = tmp_path / "bench.json"
    code = fpn("bench", "--weights", trained / "model.pt", "--size", "320x480", "--runs", 1, "--warmup", 0,
               "--no-memory", "--peak-gflops", 100, "--output", record)  # fmt: skip
    assert code == 0
    assert {"transform", "backbone", "pyramid", "head", "decoder"} <= set(json.loads(record.read_text())["stages"])


def test_fine_tune_from_a_tiny_retinanet_run(trained, photo_data, tmp_path, capsys):
    out = tmp_path / "ft"
    assert fpn("train", "--data", photo_data, "--weights", trained / "model.pt", "--iters", 1, "--out", out,
               "workers=0") == 0  # fmt: skip
    assert (out / "model.pt").is_file()


@pytest.mark.real
@pytest.mark.parametrize("flags", [[], ["--precision", "bf16"]], ids=["default", "bf16"])
def test_detect_with_torchvisions_retinanet_at_800_px(tmp_path, flags):
    names = ["photo1_640x480.png", "photo2_400x400.png"]
    photos = tmp_path / "photos"
    write_photos(photos, names)
    weights = write_torchvision_retinanet(tmp_path / "retinanet_resnet50_fpn_coco.pth")
    output = tmp_path / "detections.json"
    assert fpn("detect", photos, "--weights", weights, "--output", output, "--score-thresh", 0, *flags) == 0
    by_image = read_detections(output)
    for name in names:
        (key,) = [k for k in by_image if Path(k).name == name]
        theirs = golden()["real"]["single"][name]
        keep = label_mask(retinanet_r50())[theirs["labels"]]  # fpn reports no N/A slot nor label 0
        theirs = {k: theirs[k][keep] for k in ("boxes", "scores", "labels")}
        ours = as_tensors(by_image[key])
        if not flags:
            assert_same_detections(ours, theirs, JSON_BOX_TOL, JSON_SCORE_TOL)
        else:  # bf16: close, not equal
            assert abs(len(ours["boxes"]) - len(theirs["boxes"])) <= 0.2 * len(theirs["boxes"])


def test_compare_under_retinanet(tmp_path, capsys):
    """``fpn compare --detector retinanet``: the designs trained and measured under tiny-retinanet."""
    from fpn.data import make_synthetic

    data = make_synthetic(tmp_path / "set", num_train=4, num_val=2, image_size=96)
    out = tmp_path / "cmp"
    code = fpn("compare", "--data", data, "--designs", "fpn,image-pyramid", "--iters", 1, "--threads", 1,
               "--detector", "retinanet", "--latency-runs", 1, "--out", out, "model.pyramid.test_scales=[64,96]",
               "workers=0", "warmup_iters=1")  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["run"]["model"]["detector"] == "retinanet"
    assert set(results["designs"]) == {"fpn", "image-pyramid"}
    assert "| `fpn` |" in capsys.readouterr().out
