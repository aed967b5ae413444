"""The evaluation's plots: the PR curve drawn has pycocotools' AP as its area, the confusion matrix's rows add up
to the objects, the files have the sizes the docs state, one-point curves show."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scripted import Scripted, noisy_outputs, pycocotools_stats

from fpn.data import load_dataset, make_synthetic
from fpn.engine.evaluate import evaluate
from fpn.viz.draw import LEVEL_COLOURS
from fpn.viz.eval_plots import _figure, confusion_figure, f1_figure, plot_curve, pr_figure, write_eval_plots
from fpn.viz.val_grid import CELL, HEADER


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    path = make_synthetic(tmp_path_factory.mktemp("plots") / "set", num_train=1, num_val=6, image_size=160)
    return load_dataset(path, "val")


@pytest.fixture(scope="module")
def result(dataset):
    return evaluate(Scripted(dataset.names, noisy_outputs(dataset, seed=5)), dataset, batch_size=3)


def plotted(ax, label_start: str) -> np.ndarray:
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith(label_start)]
    return np.asarray(line.get_xydata())


def test_the_drawn_pr_curve_has_pycocotools_ap_as_its_area(dataset, result) -> None:
    stats = 100 * pycocotools_stats(dataset.coco_ground_truth(), result["detections"])
    axes = pr_figure(result["curves"]).axes  # [IoU 0.5 per class, per size, IoU 0.5:0.95 per class, per size]
    for ax, label, expected in (
        (axes[0], "all classes", stats[1]),  # AP50
        (axes[2], "all classes", stats[0]),  # AP
        (axes[1], "all ", stats[1]),
        (axes[3], "small", stats[3]),  # APs
        (axes[3], "medium", stats[4]),
    ):
        xy = plotted(ax, label)
        assert xy[:, 0] == pytest.approx(np.linspace(0, 1, 101))
        # COCO's AP is the mean precision at 101 evenly spaced recalls: the area under the plotted points,
        # each standing for 1/101 of the recall axis; the trapezoid rule differs by at most 1 point.
        assert 100 * xy[:, 1].mean() == pytest.approx(expected, abs=0.1), label
        assert 100 * np.trapezoid(xy[:, 1], xy[:, 0]) == pytest.approx(expected, abs=1.0), label
        assert f"{expected:.1f}" in next(
            line.get_label() for line in ax.get_lines() if line.get_label().startswith(label)
        )
    assert 0 < stats[0] < 100


def test_the_drawn_confusion_matrix_rows_add_up_to_the_objects(dataset, result) -> None:
    ax = confusion_figure(result["curves"]).axes[0]
    rows: dict[int, int] = {}
    for text in ax.texts:
        _, y = text.get_position()
        rows[round(y)] = rows.get(round(y), 0) + int(text.get_text())
    truth = dataset.coco_ground_truth()["annotations"]
    for i, category in enumerate(dataset.category_ids):
        assert rows.get(i, 0) == sum(1 for a in truth if a["category_id"] == category and not a["iscrowd"])
    assert rows.get(dataset.num_classes, 0) > 0  # false detections in the background row


def test_the_f1_plot_states_and_marks_the_best_threshold(result) -> None:
    best = result["best_score_threshold"]
    ax = f1_figure(result["curves"]).axes[0]
    assert f"at score {best:.2f}" in ax.get_title()
    marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [best, best]]
    assert marks, "no vertical line at the best threshold"
    mean = plotted(ax, "mean F1")
    assert mean[:, 1].max() == pytest.approx(result["curves"]["f1"]["best"]["f1"])


def test_the_plots_have_the_stated_sizes(dataset, result, tmp_path) -> None:
    written = {path.name: path for path in write_eval_plots(result["curves"], tmp_path, dataset)}
    sizes = {name: Image.open(path).size for name, path in written.items()}
    images = len(result["curves"]["examples"]["image_ids"])
    assert images == 6
    assert sizes == {
        "pr_curves.png": (1200, 900),
        "f1_curve.png": (900, 600),
        "confusion_matrix.png": (600, 600),  # 5 classes: 100 * max(6, 3 + 0.5 * 6)
        "val_grid.png": (4 * 400, 40 + 400 * 3),  # two images a row
    }
    # The grid: ground truth on the left of each pair, predictions coloured by level (and their legend) right.
    grid = np.asarray(Image.open(written["val_grid.png"]))
    prediction = grid[HEADER : HEADER + CELL, CELL : 2 * CELL]
    levels = {d["level"] for d in result["detections"] if d["image_id"] == result["curves"]["examples"]["image_ids"][0]}
    shown = [lv for lv in levels if (prediction == np.array(LEVEL_COLOURS[int(lv[1:])], np.uint8)).all(axis=2).sum()]
    assert shown
    assert write_eval_plots(None, tmp_path / "none") == []  # a split without objects: no plots


def test_a_curve_of_one_point_is_drawn_as_a_point() -> None:
    figure = _figure((2.0, 2.0))
    ax = figure.subplots()
    line = plot_curve(ax, [0.5], [0.5], color=(1.0, 0.0, 0.0))
    ax.set(xlim=(0, 1), ylim=(0, 1))
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert line.get_marker() == "o" and red.sum() > 5
    two = plot_curve(ax, [0.1, 0.9], [0.1, 0.9])
    assert two.get_marker() in ("None", None, "")
