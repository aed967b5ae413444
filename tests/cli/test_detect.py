"""``fpn detect``: mixed image folders, the JSON it writes, pictures, score threshold, and clean failures."""

from __future__ import annotations

import errno
import io
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.cli import main
from fpn.detection import FasterRCNN
from fpn.detection.checkpoint import save_detector
from fpn.presets import preset

CLASSES = ["cat", "dog"]
CATEGORY_IDS = [17, 18]
FIELDS = {"image_id", "file_name", "bbox", "score", "category_id", "category", "level"}
# name -> size (width, height) as displayed, i.e. after EXIF orientation
GOOD = {"rgb.jpg": (120, 90), "gray.png": (100, 100), "rgba.png": (70, 110), "rotated.jpg": (80, 120)}


def detect(*args) -> int:
    """``fpn detect ARGS...`` through the CLI's entry point; returns the exit status."""
    return main(["detect", *map(str, args)])


def read(path: Path) -> dict:
    """The JSON ``fpn detect`` wrote: ``{"images", "detections", "skipped"}``."""
    document = json.loads(path.read_text())
    assert list(document) == ["images", "detections", "skipped"]
    return document


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
    document = read(out / "results.json")
    records = document["detections"]
    assert isinstance(records, list) and records
    assert {r["file_name"] for r in records} == set(GOOD)  # every good image has detections at threshold 0
    # every input is accounted for: processed ones with their size and count, the corrupt one with its reason
    images = {entry["file_name"]: entry for entry in document["images"]}
    assert set(images) == set(GOOD)
    for name, (width, height) in GOOD.items():
        assert (images[name]["width"], images[name]["height"]) == (width, height)
        assert images[name]["detections"] == sum(r["file_name"] == name for r in records)
    assert [(s["file_name"], "corrupt.jpg" in s["error"]) for s in document["skipped"]] == [("corrupt.jpg", True)]
    # ids number the sorted inputs; each detection's image_id is its image's id
    ids = {entry["file_name"]: entry["id"] for entry in document["images"] + document["skipped"]}
    assert sorted(ids.values()) == list(range(1, 6)) and ids == dict(zip(sorted(ids), range(1, 6)))
    assert all(r["image_id"] == ids[r["file_name"]] for r in records)


def test_json_records_have_the_documented_fields(first_run):
    *_, out = first_run
    records = read(out / "results.json")["detections"]
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
    records = [r for r in read(out / "results.json")["detections"] if r["file_name"] == "rotated.jpg"]
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
    all_records = read(out / "results.json")["detections"]
    scores = sorted(r["score"] for r in all_records)
    thresh = scores[len(scores) // 2]
    assert scores[0] < thresh
    output = tmp_path / "filtered.json"
    code = detect(image_dir, "--weights", weights, "--output", output, "--score-thresh", thresh, "--device", "cpu")
    assert code == 0
    capsys.readouterr()
    filtered = read(output)["detections"]
    assert filtered
    assert all(r["score"] >= thresh for r in filtered)
    assert len(filtered) == sum(1 for s in scores if s >= thresh)
    assert len(filtered) < len(all_records)
    # a threshold of 1 keeps nothing, and every image is still listed, with 0 detections
    code = detect(image_dir, "--weights", weights, "--output", output, "--score-thresh", "1", "--device", "cpu")
    assert code == 0
    document = read(output)
    assert document["detections"] == []
    assert sorted(e["file_name"] for e in document["images"]) == sorted(GOOD)
    assert all(e["detections"] == 0 for e in document["images"])
    assert "0 detection(s)" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-1", "1.5", "nan", "high"])
def test_score_threshold_outside_0_to_1_is_refused(weights, image_dir, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        detect(image_dir, "--weights", weights, "--output", tmp_path / "out.json", "--score-thresh", value)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--score-thresh" in err and "from 0 to 1" in err and repr(value) in err
    assert not (tmp_path / "out.json").exists()


def test_glob_and_single_files(weights, image_dir, tmp_path, capsys):
    output = tmp_path / "pngs.json"
    code = detect(
        image_dir / "*.png", image_dir / "rgb.jpg", "--weights", weights, "--output", output, "--score-thresh", 0
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "3 image(s)" in captured.out and "skipped" not in captured.err
    assert {r["file_name"] for r in read(output)["detections"]} == {"gray.png", "rgba.png", "rgb.jpg"}


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
    assert code == 2
    assert "broken.png" in one_line_error(capsys)
    assert not (tmp_path / "out.json").exists()
    # several inputs, none usable: each is named, then one error line
    (tmp_path / "empty.png").write_bytes(b"")
    code = detect(
        tmp_path / "broken.png", tmp_path / "empty.png", "--weights", weights, "--output", tmp_path / "o.json"
    )
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 3 and "broken.png" in lines[0] and "empty.png" in lines[1]
    assert lines[2].startswith("fpn: error: none of the 2 images could be processed")


def test_bf16_precision_finds_the_same_top_detections(weights, image_dir, first_run, tmp_path, capsys):
    *_, out = first_run
    fp32 = read(out / "results.json")["detections"]
    output = tmp_path / "bf16.json"
    code = detect(
        image_dir / "rgb.jpg", "--weights", weights, "--output", output, "--score-thresh", 0, "--precision", "bf16"
    )
    assert code == 0
    capsys.readouterr()
    bf16 = read(output)["detections"]
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
    from fpn.engine.inference import detect_files
    from fpn.layers.winograd import WinogradConv2d

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


# ------------------------------------------------------------------------ outputs that cannot be written


@pytest.fixture
def model_must_not_run(monkeypatch):
    """Fail the test if detect gets as far as loading the model: output problems must be found first."""
    import fpn.cli.detect as detect_cli

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(detect_cli, "load_model", refuse)
    monkeypatch.setattr(detect_cli, "detect_files", refuse)


@pytest.mark.parametrize("flag", ["--output", "--save-images"])
def test_output_under_a_file_fails_before_the_model_runs(
    weights, image_dir, tmp_path, capsys, model_must_not_run, flag
):
    # Tests run as root, whom chmod does not stop: a regular file in the path is what cannot be got round.
    (tmp_path / "afile").write_text("in the way\n")
    target = tmp_path / "afile" / ("out.json" if flag == "--output" else "pictures")
    args = ["--output", tmp_path / "ok.json"] if flag == "--save-images" else []
    code = detect(image_dir, "--weights", weights, flag, target, *args)
    assert code == 2
    line = one_line_error(capsys)
    assert str(target) in line and "is a file, not a folder" in line
    assert not (tmp_path / "ok.json").exists()


def test_read_only_output_fails_before_the_model_runs(weights, image_dir, tmp_path, capsys, model_must_not_run):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        code = detect(image_dir, "--weights", weights, "--output", tmp_path / "d.json")
    assert code == 2
    line = one_line_error(capsys)
    assert str(tmp_path / "d.json") in line and "Read-only file system" in line


def test_an_output_that_is_a_folder_is_refused(weights, image_dir, tmp_path, capsys, model_must_not_run):
    assert detect(image_dir, "--weights", weights, "--output", tmp_path) == 2
    assert "is a folder" in one_line_error(capsys)


def test_a_failing_final_write_is_one_line(weights, image_dir, tmp_path, capsys, monkeypatch):
    # Past the early check (the disk filled up meanwhile, say), the write itself reports the file in one line.
    import fpn.cli.detect as detect_cli

    monkeypatch.setattr(detect_cli, "check_writable", lambda path, **kwargs: path)
    (tmp_path / "afile").write_text("in the way\n")
    target = tmp_path / "afile" / "out.json"
    code = detect(image_dir / "rgb.jpg", "--weights", weights, "--output", target)
    assert code == 2
    assert str(target) in one_line_error(capsys)


# ------------------------------------------------------------------------ names, shapes and sizes


def test_same_file_name_in_two_folders_stays_two_images(weights, tmp_path, capsys):
    for folder, seed in (("a", 5), ("b", 6)):
        (tmp_path / folder).mkdir()
        noise((64, 48), "RGB", seed).save(tmp_path / folder / "img.png")
    output, pictures = tmp_path / "out.json", tmp_path / "pictures"
    code = detect(
        tmp_path / "a", tmp_path / "b", "--weights", weights, "--output", output, "--score-thresh", 0,
        "--save-images", pictures,
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    document = read(output)
    assert [e["file_name"] for e in document["images"]] == ["a/img.png", "b/img.png"]
    assert {r["file_name"] for r in document["detections"]} == {"a/img.png", "b/img.png"}
    # pictures follow the same names, so neither overwrites the other
    assert sorted(p.relative_to(pictures).as_posix() for p in pictures.rglob("*.jpg")) == ["a/img.jpg", "b/img.jpg"]


def test_degenerate_shapes_are_skipped_by_name_and_size(weights, tmp_path, capsys):
    folder = tmp_path / "shapes"
    folder.mkdir()
    noise((2000, 3), "RGB", 7).save(folder / "strip.png")  # resized to fit 128 px: 3 px become 0
    noise((1, 1), "RGB", 8).save(folder / "dot.png")  # enlarged to 96x96 like any small image
    noise((60, 40), "RGB", 9).save(folder / "fine.png")
    (folder / "empty.png").write_bytes(b"")  # a 0-byte file
    output = tmp_path / "out.json"
    code = detect(folder, "--weights", weights, "--output", output, "--save-images", tmp_path / "pictures")
    captured = capsys.readouterr()
    assert code == 0
    assert "Traceback" not in captured.out + captured.err
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 2
    strip = next(line for line in skipped if "strip.png" in line)
    assert "2000x3 px" in strip and "too thin" in strip
    assert any("empty.png" in line for line in skipped)
    document = read(output)
    assert sorted(e["file_name"] for e in document["images"]) == ["dot.png", "fine.png"]
    assert [(e["width"], e["height"]) for e in document["images"] if e["file_name"] == "dot.png"] == [(1, 1)]
    assert sorted(s["file_name"] for s in document["skipped"]) == ["empty.png", "strip.png"]
    assert "2 image(s)" in captured.out and "2 skipped" in captured.out


def test_a_100_megapixel_image_is_detected_without_a_warning(weights, tmp_path, capsys):
    # Over Pillow's decompression-bomb limit (89 Mpx) but under twice it: a warning there, a result here.
    path = tmp_path / "huge.png"
    Image.new("RGB", (10000, 10000), (90, 140, 200)).save(path, compress_level=1)  # flat: a small file
    output = tmp_path / "out.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        code = detect(path, "--weights", weights, "--output", output, "--score-thresh", 0)
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    (entry,) = read(output)["images"]
    assert (entry["width"], entry["height"]) == (10000, 10000)


# ------------------------------------------------------------------------ options people know from other tools


def max_same_class_iou(records: list[dict]) -> float:
    """The largest IoU of two detections of one class in one image (boxes from the JSON's ``[x, y, w, h]``)."""
    from fpn.ops import box_iou

    groups: dict[tuple, list] = {}
    for record in records:
        groups.setdefault((record["file_name"], record["category_id"]), []).append(record["bbox"])
    largest = 0.0
    for boxes in (b for b in groups.values() if len(b) > 1):
        xyxy = torch.tensor(boxes)
        xyxy[:, 2:] += xyxy[:, :2]
        largest = max(largest, float(box_iou(xyxy, xyxy).fill_diagonal_(0).max()))
    return largest


@pytest.fixture
def loaded(monkeypatch) -> list:
    """The models ``fpn detect`` loads, as it loaded them."""
    import fpn.cli.detect as detect_cli

    models, original = [], detect_cli.load_model
    monkeypatch.setattr(detect_cli, "load_model", lambda *a, **k: models.append(original(*a, **k)) or models[-1])
    return models


def test_nms_iou_and_max_detections(weights, image_dir, first_run, tmp_path, capsys):
    *_, out = first_run
    assert max_same_class_iou(read(out / "results.json")["detections"]) > 0.35  # the checkpoint's 0.5 lets it by
    output = tmp_path / "strict.json"
    code = detect(image_dir, "--weights", weights, "--output", output, "--score-thresh", 0, "--nms-iou", 0.3,
                  "--max-detections", 3)  # fmt: skip
    assert code == 0
    capsys.readouterr()
    document = read(output)
    assert max_same_class_iou(document["detections"]) <= 0.3 + 0.02  # JSON rounding, boxes scaled back
    assert all(0 < image["detections"] <= 3 for image in document["images"])


def test_size_and_set_reach_the_model(weights, image_dir, tmp_path, capsys, loaded):
    code = detect(image_dir / "rgb.jpg", "--weights", weights, "--output", tmp_path / "o.json", "--size", 64,
                  "--max-size", 200, "--nms-iou", 0.4, "--set", "rpn.post_nms_top_n_test=20",
                  "--set", "model.roi_heads.score_thresh=0.2", "--set", "roi_heads.nms_thresh=0.6")  # fmt: skip
    assert code == 0 and "1 image(s)" in capsys.readouterr().out
    (model,) = loaded
    assert (model.transform.min_size, model.transform.max_size) == ([64], 200)
    assert model.config.rpn.post_nms_top_n_test == 20 and model.config.roi_heads.score_thresh == 0.2
    assert model.config.roi_heads.nms_thresh == 0.6  # --set has the last word, as train's overrides do


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--nms-iou", "0", "above 0 and at most 1"),
        ("--nms-iou", "1.5", "above 0 and at most 1"),
        ("--nms-iou", "nan", "above 0 and at most 1"),
        ("--max-detections", "0", "at least 1"),
        ("--max-detections", "2.5", "at least 1"),
        ("--size", "16", "at least 32 px"),
        ("--size", "big", "at least 32 px"),
        ("--max-size", "31", "at least 32 px"),
        ("--tile", "10", "at least 32 px"),
        ("--overlap", "1.0", "not including) 1"),
        ("--overlap", "-0.1", "from 0 up to"),
        ("--tile-batch", "0", "at least 1"),
    ],
)
def test_option_values_out_of_range_are_one_line(weights, image_dir, tmp_path, capsys, flag, value, rule):
    with pytest.raises(SystemExit) as exc:
        detect(image_dir, "--weights", weights, "--output", tmp_path / "out.json", flag, value)
    assert exc.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert flag in line and rule in line and repr(value) in line
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--size", "200"], ["the model's longer-side cap of 128 px", "--size 200", "raise --max-size"]),
        (["--max-size", "64"], ["--max-size 64", "the model's shorter side of 96 px"]),
        (["--size", "90", "--max-size", "80"], ["--max-size 80 is under --size 90"]),
        (["--set", "roi_heads.no_such_key=1"], ["roi_heads.no_such_key"]),
        (["--set", "roi_heads.nms_thresh"], ["roi_heads.nms_thresh", "key=value"]),
        (["--classes", "zebra"], ["--classes", "'zebra'", "its classes: cat, dog"]),
        (["--classes", ","], ["--classes: no class given"]),
        (["--full-image"], ["--full-image needs --tile"]),
    ],
    ids=[
        "size-over-cap",
        "cap-under-size",
        "both",
        "unknown-key",
        "not-key-value",
        "unknown-class",
        "empty",
        "full-without-tile",
    ],
)
def test_settings_the_model_cannot_honour_are_one_line(weights, image_dir, tmp_path, capsys, flags, named):
    output = tmp_path / "out.json"
    assert detect(image_dir, "--weights", weights, "--output", output, *flags) == 2
    line = one_line_error(capsys)
    assert all(part in line for part in named), line
    assert not output.exists()


def test_size_within_a_raised_cap_is_taken(weights, image_dir, tmp_path, capsys, loaded):
    assert detect(image_dir / "rgb.jpg", "--weights", weights, "--output", tmp_path / "o.json", "--size", 200,
                  "--max-size", 300) == 0  # fmt: skip
    capsys.readouterr()
    assert (loaded[0].transform.min_size, loaded[0].transform.max_size) == ([200], 300)


@pytest.mark.parametrize(
    ("classes", "kept"), [("dog", {"dog"}), ("17", {"cat"}), ("DOG, 17", {"cat", "dog"})], ids=["name", "id", "both"]
)
def test_classes_filter(weights, image_dir, tmp_path, capsys, classes, kept):
    output = tmp_path / "some.json"
    code = detect(image_dir, "--weights", weights, "--output", output, "--score-thresh", 0, "--classes", classes)
    assert code == 0
    capsys.readouterr()
    document = read(output)
    assert {r["category"] for r in document["detections"]} == kept
    assert len(document["images"]) == len(GOOD)  # every image still listed, with the count of what was kept


@pytest.fixture(scope="module")
def slotted_weights(tmp_path_factory) -> Path:
    """A checkpoint whose label 2 is a placeholder slot, as torchvision's COCO layout has ten."""
    torch.manual_seed(0)
    config = preset("micro-fpn")
    config.class_names = ["cat", "N/A", "dog"]
    config.roi_heads.score_thresh = 0.0
    return save_detector(FasterRCNN(config), tmp_path_factory.mktemp("slotted") / "model.pt")


def test_placeholder_slots_never_reach_the_json(slotted_weights, image_dir, tmp_path, capsys):
    output = tmp_path / "out.json"
    code = detect(image_dir, "--weights", slotted_weights, "--output", output, "--score-thresh", 0,
                  "--save-images", tmp_path / "pictures")  # fmt: skip
    assert code == 0
    capsys.readouterr()
    records = read(output)["detections"]
    assert records and {r["category"] for r in records} <= {"cat", "dog"}
    assert 2 not in {r["category_id"] for r in records}
    for token in ("N/A", "2"):
        assert detect(image_dir, "--weights", slotted_weights, "--output", output, "--classes", token) == 2
        assert "unused slot" in one_line_error(capsys)


def test_models_counts_classes_not_slots(monkeypatch, capsys):
    import fpn.cli.models as models_cli

    monkeypatch.setattr(models_cli, "count", lambda config, flops=True: {"params": 0, "gflops": None})
    assert main(["models", "r50-fpn", "micro-fpn", "--no-flops"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["r50-fpn"][-1] == "80" and rows["micro-fpn"][-1] == "1"  # COCO's 80 classes in 90 slots


def test_tiled_detection_records_each_detections_tile(weights, tmp_path, capsys):
    noise((300, 200), "RGB", 7).save(tmp_path / "scene.png")
    output = tmp_path / "tiled.json"
    code = detect(tmp_path / "scene.png", "--weights", weights, "--output", output, "--score-thresh", 0,
                  "--tile", 96, "--overlap", 0.25, "--tile-batch", 3, "--full-image", "--merge", "nms")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    document = read(output)
    records = document["detections"]
    assert records and set(records[0]) == FIELDS | {"tile"}
    assert document["images"][0]["detections"] == len(records)
    tiles = [r["tile"] for r in records]
    assert all(t == "full" or (len(t) == 4 and t[2] - t[0] == 96 and t[3] - t[1] == 96) for t in tiles)
    for record in records:
        x, y, w, h = record["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 300.01 and y + h <= 200.01  # the image's pixels, not a tile's
