"""The plots people read, through the command line: ``fpn eval`` and ``fpn train`` write them beside
metrics.json, with the stated sizes, and ``fpn detect`` suggests the best threshold it found."""

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

# (width, height) of the val images: photo-like sizes between 400 and 1000 px.
SIZES = [(640, 480), (1000, 700), (400, 560)]
PLOTS = ("pr_curves.png", "f1_curve.png", "confusion_matrix.png", "val_grid.png")


def untrained_detector() -> FasterRCNN:
    torch.manual_seed(0)
    config = preset("tiny-fpn")  # fpn train's default preset
    config.class_names = ["blob"]
    config.roi_heads.score_thresh = 0.0  # detections even untrained
    return FasterRCNN(config).eval()


def write_coco_set(root: Path, model: FasterRCNN) -> Path:
    """Three noisy images in COCO format (train = val) whose objects (class "blob") are three of ``model``'s
    own detections, so that an untrained model finds some, plus one it does not find."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i, (w, h) in enumerate(SIZES, start=1):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / "images" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        with torch.no_grad():
            found = model([torch.from_numpy(array).permute(2, 0, 1).float() / 255])[0]["boxes"][::7][:3]
        boxes = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in found.tolist()] + [[0, 0, 0.3 * w, 0.3 * h]]
        for box in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": box, "area": box[2] * box[3]}
            )
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "blob"}]}
    (root / "set.json").write_text(json.dumps(document))
    spec = (
        "format: coco\ntrain: {annotations: set.json, images: images/}\nval: {annotations: set.json, images: images/}\n"
    )
    (root / "data.yaml").write_text(spec)
    return root / "data.yaml"


def check_plots(folder: Path, images: int) -> None:
    sizes = {name: Image.open(folder / name).size for name in PLOTS}
    assert sizes["pr_curves.png"] == (1200, 900)
    assert sizes["f1_curve.png"] == (900, 600)
    assert sizes["confusion_matrix.png"] == (600, 600)
    assert sizes["val_grid.png"] == (400 * 2 * min(images, 2), 40 + 400 * ((images + 1) // 2))
    assert (folder / "curves.json").is_file()


def test_eval_writes_the_plots_and_detect_suggests_the_best_threshold(tmp_path: Path, capsys) -> None:
    model = untrained_detector()
    data = write_coco_set(tmp_path / "set", model)
    run = tmp_path / "run"
    weights = save_detector(model, run / "model.pt")
    argv = ["eval", "--weights", str(weights), "--data", str(data), "--output", str(run / "metrics.json")]
    assert main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "metrics.json").read_text())
    best = saved["best_score_threshold"]
    assert isinstance(best, float) and 0.0 <= best <= 1.0
    assert f"best score threshold {best:.2f}" in out and "plots ->" in out
    check_plots(run, len(SIZES))
    curves = json.loads((run / "curves.json").read_text())
    assert curves["best_score_threshold"] == best
    assert sum(curves["confusion"]["matrix"][0]) == 4 * len(SIZES)  # the class row: all its objects

    # fpn detect with these weights: a one-line suggestion, the threshold itself unchanged.
    used = 0.99 if best != 0.99 else 0.98
    image = tmp_path / "set" / "images" / "1.jpg"
    output = tmp_path / "detections.json"
    assert (
        main(["detect", str(image), "--weights", str(weights), "--output", str(output), "--score-thresh", str(used)])
        == 0
    )
    notes = [line for line in capsys.readouterr().err.splitlines() if "best F1" in line]
    assert len(notes) == 1 and f"--score-thresh {best:.2f}" in notes[0]
    assert all(d["score"] >= used for d in json.loads(output.read_text())["detections"])


def test_eval_without_plots_and_detect_without_metrics(tmp_path: Path, capsys) -> None:
    data = make_synthetic(tmp_path / "syn", num_train=1, num_val=1, image_size=96)
    torch.manual_seed(0)
    config = preset("micro-fpn")
    config.class_names = ["ring"]
    config.roi_heads.score_thresh = 0.0
    weights = save_detector(FasterRCNN(config), tmp_path / "w" / "model.pt")
    out = tmp_path / "out"
    argv = ["eval", "--weights", str(weights), "--data", str(data), "--output", str(out / "m.json"), "--no-plots"]
    assert main(argv) == 0
    assert (out / "m.json").is_file() and not any((out / name).exists() for name in (*PLOTS, "curves.json"))
    capsys.readouterr()
    image = next((data.parent / "val").iterdir())
    assert main(["detect", str(image), "--weights", str(weights), "--output", str(tmp_path / "d.json")]) == 0
    assert "best F1" not in capsys.readouterr().err  # no metrics.json beside these weights


@pytest.mark.slow
def test_train_writes_the_plots_at_the_end(tmp_path: Path, capsys) -> None:
    data = make_synthetic(tmp_path / "syn", num_train=4, num_val=3, image_size=128)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", "micro-fpn", "--out", str(run), "--iters", "2"]
    assert main([*argv, "workers=0", "train.batch_size=1", "model.roi_heads.score_thresh=0.0"]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert "best_score_threshold" in saved
    check_plots(run, 3)
    curves = json.loads((run / "curves.json").read_text())
    assert curves["best_score_threshold"] == saved["best_score_threshold"]
