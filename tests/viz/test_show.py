"""fpn show / fpn anchors: pictures of the right size, counts that add up."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.cli import main
from fpn.config import ModelConfig, apply_overrides, from_dict, to_dict
from fpn.data import load_dataset, make_synthetic
from fpn.detection import FasterRCNN
from fpn.detection.checkpoint import save_detector
from fpn.presets import preset
from fpn.viz.anchor_fit import fit
from fpn.viz.show import inspect_image


def tiny_config(**extra) -> ModelConfig:
    data = to_dict(preset("tiny-fpn"))
    apply_overrides(
        data,
        ["backbone.width=8", "pyramid.channels=16", "roi_heads.representation_size=32", "transform.min_size=[96]"],
    )
    data["class_names"] = ["ring", "triangle"]
    data.update(extra)
    return from_dict(ModelConfig, data)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_detector(FasterRCNN(tiny_config()), path)
    return path


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)).save(path)
    return path


def test_inspection_counts_add_up(weights, image_path):
    from fpn.data.images import load_image
    from fpn.detection.checkpoint import load_detector

    model, _ = load_detector(weights)
    model.roi_heads.config.score_thresh = 0.0
    image = load_image(image_path)
    inspection = inspect_image(model, image, torch.tensor([[10.0, 10.0, 60.0, 50.0]]))
    counts = inspection.counts
    assert list(counts) == ["p2", "p3", "p4", "p5", "p6"]
    assert sum(c["detections"] for c in counts.values()) == len(inspection.detections["boxes"]) > 0
    assert sum(c["rois"] for c in counts.values()) == sum(c["proposals"] for c in counts.values())
    assert sum(c["positive_anchors"] for c in counts.values()) >= 1  # each box keeps at least its best anchor
    assert counts["p6"]["rois"] == 0  # P6 serves the RPN only
    for name, maps in (("c", inspection.bottom_up), ("p", inspection.pyramid)):
        assert all(key.startswith(name) for key in maps)


def test_show_cli_writes_pictures_and_counts(weights, image_path, tmp_path, capsys):
    out = tmp_path / "show"
    code = main(["show", str(image_path), "--weights", str(weights), "--out", str(out), "--score-thresh", "0"])
    assert code == 0
    counts = json.loads((out / "levels.json").read_text())
    printed = capsys.readouterr().out
    total = next(line for line in printed.splitlines() if line.startswith("total")).split()
    assert int(total[-1]) == sum(c["detections"] for c in counts.values())
    with Image.open(out / "detections_by_level.png") as drawn:
        # The 130x90 image is enlarged so its shorter side is 480 px (legible labels), plus a legend below.
        assert drawn.width == round(130 * 480 / 90) and drawn.height > 480
    with Image.open(out / "pyramid_maps.png") as maps:
        assert maps.width > 500


def test_show_rejects_a_malformed_box(weights, image_path, tmp_path, capsys):
    code = main(["show", str(image_path), "--weights", str(weights), "--box", "5,5,1,1", "--out", str(tmp_path)])
    assert code == 2
    assert "--box '5,5,1,1'" in capsys.readouterr().err


def test_anchor_fit_flags_objects_smaller_than_the_anchors(tmp_path):
    yaml_path = make_synthetic(tmp_path / "syn", num_train=6, num_val=2, image_size=96, seed=1)
    dataset = load_dataset(yaml_path, "train")
    config = tiny_config()
    config.anchors.sizes = [64, 128, 256, 512, 1024]
    result = fit(dataset, config, [2, 3, 4, 5])
    assert len(result.sizes) == dataset.num_objects()
    assert any("smaller anchors" in note for note in result.notes)
    config.anchors.sizes = [4, 8, 16, 32, 64]
    assert not any("smaller anchors" in note for note in fit(dataset, config, [2, 3, 4, 5]).notes)


def test_anchors_cli_writes_histogram_and_summary(tmp_path, capsys):
    yaml_path = make_synthetic(tmp_path / "syn", num_train=6, num_val=2, image_size=96, seed=1)
    out = tmp_path / "anchors.png"
    assert main(["anchors", "--data", str(yaml_path), "--out", str(out), "anchors.sizes=[128,256,512,1024,2048]"]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["anchor_sizes"] == [128, 256, 512, 1024, 2048]
    assert "smaller anchors" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.size == (990, 462)


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fpn: error: "), captured.err
    return lines[0]


def test_show_out_under_a_file_fails_before_the_model_loads(weights, image_path, tmp_path, capsys, monkeypatch):
    import fpn.cli.show as show_cli

    monkeypatch.setattr(show_cli, "load_detector", lambda *a, **k: pytest.fail("model loaded before the check"))
    (tmp_path / "afile").write_text("in the way\n")
    out = tmp_path / "afile" / "show"
    assert main(["show", str(image_path), "--weights", str(weights), "--out", str(out)]) == 2
    assert str(out) in one_line_error(capsys)


def test_show_refuses_an_image_too_thin_for_the_model(weights, tmp_path, capsys):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (2000, 3), (10, 200, 30)).save(strip)
    assert main(["show", str(strip), "--weights", str(weights), "--out", str(tmp_path / "show")]) == 2
    line = one_line_error(capsys)
    assert str(strip) in line and "2000x3 px" in line and "too thin" in line


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_show_score_threshold_must_be_0_to_1(weights, image_path, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["show", str(image_path), "--weights", str(weights), "--out", str(tmp_path), "--score-thresh", value])
    assert exc.value.code == 2
    assert "--score-thresh: must be a number from 0 to 1" in capsys.readouterr().err


def test_anchors_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("in the way\n")
    out = tmp_path / "afile" / "anchors.png"
    assert main(["anchors", "--data", "synthetic", "--out", str(out)]) == 2
    assert str(out) in one_line_error(capsys)
