"""``fpn detect``: mixed image folders, the JSON it writes, pictures, score threshold, and clean failures."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.checkpoints import save_detector
from fpn.cli import main
from fpn.detection import FasterRCNN
from fpn.presets import preset

CLASSES = ["cat", "dog"]
CATEGORY_IDS = [17, 18]
FIELDS = {"file_name", "bbox", "score", "category_id", "category", "level"}
# name -> size (width, height) as displayed, i.e. after EXIF orientation
GOOD = {"rgb.jpg": (120, 90), "gray.png": (100, 100), "rgba.png": (70, 110), "rotated.jpg": (80, 120)}


def detect(*args) -> int:
    """``fpn detect ARGS...`` through the CLI's entry point; returns the exit status."""
    return main(["detect", *map(str, args)])


def noise(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = preset("tiny-fpn")
    config.class_names = list(CLASSES)
    config.category_ids = list(CATEGORY_IDS)
    config.transform.min_size = [96]
    config.transform.max_size = 128
    config.rpn.pre_nms_top_n_test = 200
    config.rpn.post_nms_top_n_test = 50
    config.roi_heads.detections_per_image = 20
    model = FasterRCNN(config)
    return save_detector(model, tmp_path_factory.mktemp("weights") / "model.pt")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    noise((120, 90), "RGB", 0).save(folder / "rgb.jpg", quality=90)
    noise((100, 100), "L", 1).save(folder / "gray.png")
    noise((70, 110), "RGBA", 2).save(folder / "rgba.png")
    # stored 120 wide and 80 high, with EXIF orientation 6 (rotate 90 degrees clockwise to display): 80 x 120
    exif = Image.Exif()
    exif[0x0112] = 6
    noise((120, 80), "RGB", 3).save(folder / "rotated.jpg", exif=exif, quality=90)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder\n")
    return folder


@pytest.fixture(scope="module")
def first_run(weights, image_dir, tmp_path_factory):
    """One run over the folder at score threshold 0, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("run")
    capture = pytest.MonkeyPatch()
    stdout, stderr = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    capture.setattr(sys, "stderr", stderr)
    try:
        code = detect(
            image_dir, "--weights", weights, "--output", out / "results.json", "--save-images", out / "pictures",
            "--score-thresh", 0, "--device", "cpu",
        )  # fmt: skip
    finally:
        capture.undo()
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_folder_of_mixed_images(first_run):
    code, stdout, stderr, out = first_run
    assert code == 0
    assert "Traceback" not in stdout + stderr
    # the corrupt file is reported by name, once, on stderr; the others are processed
    skipped = [line for line in stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "corrupt.jpg" in skipped[0]
    for name in GOOD:
        assert name not in stderr
    assert "4 image(s)" in stdout and "1 skipped" in stdout
    records = json.loads((out / "results.json").read_text())
    assert isinstance(records, list) and records
    assert {r["file_name"] for r in records} == set(GOOD)  # every good image has detections at threshold 0


def test_json_records_have_the_documented_fields(first_run):
    *_, out = first_run
    records = json.loads((out / "results.json").read_text())
    for record in records:
        assert set(record) == FIELDS
        width, height = GOOD[record["file_name"]]
        x, y, w, h = record["bbox"]
        assert len(record["bbox"]) == 4
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0
        # within the image as displayed (the EXIF-rotated one is 80 x 120), up to the 2-decimal rounding
        assert x + w <= width + 0.011 and y + h <= height + 0.011, record
        assert 0 <= record["score"] <= 1
        assert record["category"] in CLASSES
        assert record["category_id"] == CATEGORY_IDS[CLASSES.index(record["category"])]
        assert record["level"] in {"p2", "p3", "p4", "p5"}


def test_exif_rotated_image_uses_the_displayed_size(first_run):
    *_, out = first_run
    records = [r for r in json.loads((out / "results.json").read_text()) if r["file_name"] == "rotated.jpg"]
    assert records
    # stored 120 wide and 80 high, displayed 80 wide and 120 high: boxes live in the displayed image
    assert max(r["bbox"][0] + r["bbox"][2] for r in records) <= 80.011
    assert max(r["bbox"][1] + r["bbox"][3] for r in records) <= 120.011
    with Image.open(out / "pictures" / "rotated.jpg") as picture:
        assert picture.size == (80, 120)


def test_save_images_writes_one_picture_per_good_image(first_run):
    *_, out = first_run
    pictures = sorted(p.name for p in (out / "pictures").iterdir())
    assert pictures == sorted(f"{Path(name).stem}.jpg" for name in GOOD)
    for name, size in GOOD.items():
        with Image.open(out / "pictures" / f"{Path(name).stem}.jpg") as picture:
            assert picture.size == size, name
            assert picture.mode == "RGB"


def test_score_threshold_filters(weights, image_dir, first_run, tmp_path, capsys):
    *_, out = first_run
    all_records = json.loads((out / "results.json").read_text())
    scores = sorted(r["score"] for r in all_records)
    thresh = scores[len(scores) // 2]
    assert scores[0] < thresh
    output = tmp_path / "filtered.json"
    code = detect(image_dir, "--weights", weights, "--output", output, "--score-thresh", thresh, "--device", "cpu")
    assert code == 0
    capsys.readouterr()
    filtered = json.loads(output.read_text())
    assert filtered
    assert all(r["score"] >= thresh for r in filtered)
    assert len(filtered) == sum(1 for s in scores if s >= thresh)
    assert len(filtered) < len(all_records)
    # a threshold above every score leaves an empty list (still valid JSON)
    code = detect(image_dir, "--weights", weights, "--output", output, "--score-thresh", "1.01", "--device", "cpu")
    assert code == 0
    assert json.loads(output.read_text()) == []
    assert "0 detection(s)" in capsys.readouterr().out


def test_glob_and_single_files(weights, image_dir, tmp_path, capsys):
    output = tmp_path / "pngs.json"
    code = detect(
        image_dir / "*.png", image_dir / "rgb.jpg", "--weights", weights, "--output", output, "--score-thresh", 0
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "3 image(s)" in captured.out and "skipped" not in captured.err
    assert {r["file_name"] for r in json.loads(output.read_text())} == {"gray.png", "rgba.png", "rgb.jpg"}


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fpn: error: ")
    return lines[0]


def test_missing_weights_file(image_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_model.pt"
    output = tmp_path / "out.json"
    code = detect(image_dir, "--weights", missing, "--output", output)
    assert code == 2
    assert str(missing) in one_line_error(capsys)
    assert not output.exists()


def test_glob_matching_nothing(weights, tmp_path, capsys):
    pattern = str(tmp_path / "*.jpg")
    code = detect(pattern, "--weights", weights, "--output", tmp_path / "out.json")
    assert code == 2
    assert pattern in one_line_error(capsys)


def test_missing_source(weights, tmp_path, capsys):
    source = str(tmp_path / "nowhere")
    code = detect(source, "--weights", weights, "--output", tmp_path / "out.json")
    assert code == 2
    assert source in one_line_error(capsys)


def test_weights_that_are_not_a_checkpoint(image_dir, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_text("hello")
    code = detect(image_dir, "--weights", bad, "--output", tmp_path / "out.json")
    assert code == 2
    assert str(bad) in one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(weights, image_dir, tmp_path, capsys):
    code = detect(image_dir, "--weights", weights, "--device", "cuda", "--output", tmp_path / "out.json")
    assert code == 2
    assert "cuda" in one_line_error(capsys).lower()


def test_only_corrupt_images_is_a_failure(weights, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = detect(tmp_path / "broken.png", "--weights", weights, "--output", tmp_path / "out.json")
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.png" in captured.err and "Traceback" not in captured.err


def test_bf16_precision_finds_the_same_top_detections(weights, image_dir, first_run, tmp_path, capsys):
    *_, out = first_run
    fp32 = json.loads((out / "results.json").read_text())
    output = tmp_path / "bf16.json"
    code = detect(
        image_dir / "rgb.jpg", "--weights", weights, "--output", output, "--score-thresh", 0, "--precision", "bf16"
    )
    assert code == 0
    capsys.readouterr()
    bf16 = json.loads(output.read_text())
    assert bf16 and all(r["file_name"] == "rgb.jpg" for r in bf16)
    best = max((r for r in fp32 if r["file_name"] == "rgb.jpg"), key=lambda r: r["score"])
    # bf16 is close, not equal: the best fp32 detection is found again within a pixel and a little score.
    assert any(
        r["category_id"] == best["category_id"]
        and max(abs(a - b) for a, b in zip(r["bbox"], best["bbox"])) < 1.0
        and abs(r["score"] - best["score"]) < 0.02
        for r in bf16
    )


@pytest.mark.parametrize("direct", [False, True], ids=["winograd", "direct"])
def test_direct_conv_keeps_the_direct_convolutions(image_dir, direct):
    from fpn.detect import detect_files
    from fpn.ops.winograd import WinogradConv2d

    torch.manual_seed(0)
    config = preset("small-fpn")  # 128-channel pyramid: Winograd unless told otherwise
    config.class_names = list(CLASSES)
    config.transform.min_size, config.transform.max_size = [96], 128
    model = FasterRCNN(config)
    results = list(detect_files(model, [image_dir / "rgb.jpg"], device=torch.device("cpu"), winograd=not direct))
    assert results[0].error is None
    swapped = sum(isinstance(m, WinogradConv2d) for m in model.modules())
    assert (swapped == 0) if direct else (swapped > 0)


def test_direct_conv_flag_reaches_the_detector(weights, image_dir, tmp_path, capsys, monkeypatch):
    import fpn.cli.detect as detect_cli

    seen = []
    original = detect_cli.detect_files
    monkeypatch.setattr(detect_cli, "detect_files", lambda *a, **k: seen.append(k["winograd"]) or original(*a, **k))
    for flags in ([], ["--direct-conv"]):
        output = tmp_path / "direct.json"
        assert detect(image_dir / "rgb.jpg", "--weights", weights, "--output", output, *flags) == 0
        assert "1 image(s)" in capsys.readouterr().out
    assert seen == [True, False]
