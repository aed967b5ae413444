"""A corpus of the mistakes users make, each run through ``fpn.cli.main``: never a traceback.

Each case is one command line with one thing wrong (a file, a flag, a config key, an image, a checkpoint);
the command must exit non-zero with exactly one ``fpn: error:`` line that names the culprit, or, where the
mistake is recoverable (a corrupt image among good ones), finish and say what it left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.cli import main
from fpn.data import make_synthetic
from fpn.detection import FasterRCNN
from fpn.detection.checkpoint import save_detector
from fpn.presets import preset

FAST = ["train.workers=0", "train.batch_size=1"]


def run(args: list, capsys) -> tuple[int, str]:
    """Exit status and stderr of ``fpn ARGS`` (argparse's own errors exit through SystemExit)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Good files to break one at a time: a checkpoint, images, a COCO set."""
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    config = preset("micro-fpn")
    weights = save_detector(FasterRCNN(config), root / "model.pt")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(images / "good.png")
    data = make_synthetic(root / "set", num_train=4, num_val=2, image_size=96)
    (root / "a_file").write_text("a file, not a folder\n")
    (root / "notes.txt").write_text("hello\n")
    (root / "empty.jpg").write_bytes(b"")
    good = (images / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.zeros((3, 2000, 3), np.uint8)).save(root / "strip.png")
    (root / "half.pt").write_bytes(weights.read_bytes()[:5000])
    (root / "bad.yaml").write_text("format: coco\ntrain: {annotations: [unclosed\n")
    (root / "nosplit.yaml").write_text("format: coco\n")
    (root / "broken.json").write_text("{not json")
    split = "{annotations: broken.json, images: images/}"
    (root / "brokenjson.yaml").write_text(f"format: coco\ntrain: {split}\nval: {split}\n")
    empty = {"images": [{"id": 1, "file_name": "good.png", "height": 90, "width": 120}], "annotations": [],
             "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    (root / "noobjects.json").write_text(json.dumps(empty))
    split = "{annotations: noobjects.json, images: images/}"
    (root / "noobjects.yaml").write_text(f"format: coco\ntrain: {split}\nval: {split}\n")
    for name, line in (("yolo_class", "3 0.5 0.5 0.2 0.2"), ("yolo_pixels", "0 60 45 20 20")):
        (root / name / "images").mkdir(parents=True)
        (root / name / "images" / "a.png").write_bytes(good)
        (root / name / "labels").mkdir()
        (root / name / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
        (root / name / "data.yaml").write_text("train: images\nval: images\nnames: [a, b, c]\n")
    return {"root": root, "weights": weights, "images": images, "data": data}


# (name, argv with {placeholders}, what the error line must name)
CASES = [
    ("detect: no such weights", ["detect", "{images}", "--weights", "{root}/missing.pt"], "missing.pt"),
    ("detect: weights not a checkpoint", ["detect", "{images}", "--weights", "{root}/notes.txt"], "notes.txt"),
    ("detect: truncated checkpoint", ["detect", "{images}", "--weights", "{root}/half.pt"], "half.pt"),
    ("detect: no such source", ["detect", "{root}/nowhere", "--weights", "{weights}"], "nowhere"),
    ("detect: pattern matching nothing", ["detect", "{root}/*.gif", "--weights", "{weights}"], "*.gif"),
    (
        "detect: output under a file",
        ["detect", "{images}", "--weights", "{weights}", "--output", "{root}/a_file/d.json"],
        "a_file",
    ),
    (
        "detect: pictures under a file",
        [
            "detect",
            "{images}",
            "--weights",
            "{weights}",
            "--output",
            "{root}/ok.json",
            "--save-images",
            "{root}/a_file/pics",
        ],
        "a_file",
    ),
    (
        "detect: score threshold above 1",
        ["detect", "{images}", "--weights", "{weights}", "--score-thresh", "1.5"],
        "score-thresh",
    ),
    (
        "detect: negative score threshold",
        ["detect", "{images}", "--weights", "{weights}", "--score-thresh", "-1"],
        "score-thresh",
    ),
    (
        "detect: only an empty file",
        ["detect", "{root}/empty.jpg", "--weights", "{weights}", "--output", "{root}/e.json"],
        "empty.jpg",
    ),
    (
        "detect: only a truncated image",
        ["detect", "{root}/truncated.png", "--weights", "{weights}", "--output", "{root}/t.json"],
        "truncated.png",
    ),
    (
        "detect: only a 2000x3 strip",
        ["detect", "{root}/strip.png", "--weights", "{weights}", "--output", "{root}/s.json"],
        "strip.png",
    ),
    (
        "train: no such data",
        ["train", "--data", "{root}/missing.yaml", "--model", "micro-fpn", "--out", "{root}/r1"],
        "missing.yaml",
    ),
    (
        "train: YAML syntax error",
        ["train", "--data", "{root}/bad.yaml", "--model", "micro-fpn", "--out", "{root}/r2"],
        "bad.yaml",
    ),
    (
        "train: no train split",
        ["train", "--data", "{root}/nosplit.yaml", "--model", "micro-fpn", "--out", "{root}/r3"],
        "nosplit.yaml",
    ),
    (
        "train: annotations not JSON",
        ["train", "--data", "{root}/brokenjson.yaml", "--model", "micro-fpn", "--out", "{root}/r4"],
        "broken.json",
    ),
    (
        "train: no objects",
        [
            "train",
            "--data",
            "{root}/noobjects.yaml",
            "--model",
            "micro-fpn",
            "--out",
            "{root}/r5",
            "--iters",
            "1",
            *FAST,
        ],
        "noobjects",
    ),
    (
        "train: unknown key",
        ["train", "--data", "{data}", "--model", "micro-fpn", "--out", "{root}/r6", "train.no_such_key=1"],
        "no_such_key",
    ),
    (
        "train: value of the wrong type",
        ["train", "--data", "{data}", "--model", "micro-fpn", "--out", "{root}/r7", "train.lr=fast"],
        "lr",
    ),
    (
        "train: unknown preset",
        ["train", "--data", "{data}", "--model", "huge-fpn", "--out", "{root}/r8"],
        "huge-fpn",
    ),
    ("train: resume without --out", ["train", "--data", "{data}", "--resume"], "--out"),
    ("train: resume an empty folder", ["train", "--resume", "--out", "{root}/images"], "images"),
    (
        "train: out under a file",
        ["train", "--data", "{data}", "--model", "micro-fpn", "--out", "{root}/a_file/run", "--iters", "1", *FAST],
        "a_file",
    ),
    ("eval: no such weights", ["eval", "--weights", "{root}/missing.pt", "--data", "{data}"], "missing.pt"),
    ("eval: truncated checkpoint", ["eval", "--weights", "{root}/half.pt", "--data", "{data}"], "half.pt"),
    (
        "eval: output under a file",
        ["eval", "--weights", "{weights}", "--data", "{data}", "--output", "{root}/a_file/m.json"],
        "a_file",
    ),
    ("eval: unknown split", ["eval", "--weights", "{weights}", "--data", "{data}", "--split", "test"], "test"),
    (
        "show: no such image",
        ["show", "--weights", "{weights}", "{root}/missing.png", "--out", "{root}/show1"],
        "missing.png",
    ),
    (
        "show: truncated image",
        ["show", "--weights", "{weights}", "{root}/truncated.png", "--out", "{root}/show2"],
        "truncated.png",
    ),
    (
        "show: out under a file",
        ["show", "--weights", "{weights}", "{images}/good.png", "--out", "{root}/a_file/s"],
        "a_file",
    ),
    (
        "train: YOLO class out of range",
        ["train", "--data", "{root}/yolo_class/data.yaml", "--model", "micro-fpn", "--out", "{root}/r9"],
        "labels/a.txt:2: class 3 out of range (names has 3)",
    ),
    (
        "convert: YOLO coordinates in pixels",
        ["convert", "{root}/yolo_pixels/data.yaml", "--to", "coco", "--output", "{root}/c1"],
        "labels/a.txt:2: x_center 60 is outside 0..1",
    ),
    ("convert: output not empty", ["convert", "{data}", "--to", "yolo", "--output", "{images}"], "images"),
    ("convert: no such data", ["convert", "{root}/missing.yaml", "--to", "voc", "--output", "{root}/c2"], "missing"),
    ("anchors: no such data", ["anchors", "--data", "{root}/missing.yaml", "--out", "{root}/a.png"], "missing.yaml"),
    ("bench: size that is not HxW", ["bench", "--model", "micro-fpn", "--size", "800xabc"], "800xabc"),
    ("bench: no such weights", ["bench", "--weights", "{root}/missing.pt"], "missing.pt"),
    (
        "bench: output under a file",
        [
            "bench",
            "--model",
            "micro-fpn",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--no-memory",
            "--peak-gflops",
            "10",
            "--output",
            "{root}/a_file/b.json",
        ],
        "a_file",
    ),
]


@pytest.mark.parametrize("argv, culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_gives_one_line_naming_its_culprit(world, argv, culprit, capsys):
    places = {key: str(value) for key, value in world.items()}
    code, err = run([arg.format(**places) for arg in argv], capsys)
    assert "Traceback" not in err, err
    assert code != 0, err
    errors = [line for line in err.splitlines() if line.startswith("fpn: error:") or "error:" in line]
    assert len(errors) == 1, err
    assert culprit in errors[0], errors[0]


def test_a_corrupt_image_among_good_ones_is_left_out_and_named(world, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((world["images"] / "good.png").read_bytes())
    (folder / "truncated.png").write_bytes((world["root"] / "truncated.png").read_bytes())
    (folder / "strip.png").write_bytes((world["root"] / "strip.png").read_bytes())
    code, err = run(["detect", folder, "--weights", world["weights"], "--output", tmp_path / "d.json"], capsys)
    assert code == 0 and "Traceback" not in err
    assert "truncated.png" in err and "strip.png" in err
    results = json.loads((tmp_path / "d.json").read_text())
    assert [image["file_name"] for image in results["images"]] == ["good.png"]
