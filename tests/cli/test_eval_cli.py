"""``fpn eval`` without training: level names in its files, the warning for classes the model lacks, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fpn.cli import main
from fpn.data import make_synthetic
from fpn.detection import FasterRCNN
from fpn.detection.checkpoint import save_detector
from fpn.presets import preset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("eval_cli") / "set", num_train=1, num_val=2, image_size=96)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained micro model of two synthetic classes and one the set does not have."""
    torch.manual_seed(0)
    config = preset("micro-fpn")
    config.class_names = ["ring", "zebra", "triangle"]
    config.roi_heads.score_thresh = 0.0  # detections even untrained
    return save_detector(FasterRCNN(config), tmp_path_factory.mktemp("eval_weights") / "model.pt")


def test_eval_names_levels_as_detect_does_and_warns_about_missing_classes(data, weights, tmp_path, capsys, caplog):
    metrics, detections = tmp_path / "metrics.json", tmp_path / "detections.json"
    argv = ["eval", "--weights", str(weights), "--data", str(data), "--device", "cpu"]
    with caplog.at_level("WARNING"):  # the fpn command logs to stderr; under pytest, the log is captured here
        assert main([*argv, "--output", str(metrics), "--detections", str(detections)]) == 0
    captured = capsys.readouterr()
    warnings = [r.getMessage() for r in caplog.records if "classes are not classes of the model" in r.getMessage()]
    assert len(warnings) == 1
    assert "3 of the dataset's 5 classes" in warnings[0]
    assert all(name in warnings[0] for name in ("cross", "striped_square", "checker_disc"))
    saved = json.loads(metrics.read_text())
    assert saved["classes_not_in_model"] == ["cross", "striped_square", "checker_disc"]
    listed = json.loads(detections.read_text())
    assert listed and {d["level"] for d in listed} <= {"p2", "p3", "p4", "p5"}
    assert set(saved["per_level"]) == {d["level"] for d in listed}
    rows = [line.split()[0] for line in captured.out.splitlines() if line.rstrip().endswith("%")]  # share column
    assert set(rows) == set(saved["per_level"])


@pytest.mark.parametrize("flag", ["--output", "--detections"])
def test_an_output_that_cannot_be_written_fails_before_evaluating(data, weights, tmp_path, capsys, monkeypatch, flag):
    import fpn.cli.eval as eval_cli

    monkeypatch.setattr(eval_cli, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking outputs"))
    (tmp_path / "afile").write_text("in the way\n")
    target = tmp_path / "afile" / "out.json"
    assert main(["eval", "--weights", str(weights), "--data", str(data), flag, str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fpn: error:") and str(target) in err[0]


def test_tiled_eval_records_tiles_and_settings(data, weights, tmp_path, capsys):
    metrics, detections = tmp_path / "metrics.json", tmp_path / "detections.json"
    argv = ["eval", "--weights", str(weights), "--data", str(data), "--device", "cpu", "--tile", "64"]
    assert main([*argv, "--overlap", "0.25", "--output", str(metrics), "--detections", str(detections)]) == 0
    saved = json.loads(metrics.read_text())
    assert saved["tile"] == {"size": 64, "overlap": 0.25, "merge": "greedy", "full_image": False}
    listed = json.loads(detections.read_text())
    assert listed and all(len(d["tile"]) == 4 for d in listed)
    assert main(["eval", "--weights", str(weights), "--data", str(data), "--full-image"]) == 2
    assert "--full-image needs --tile" in capsys.readouterr().err
