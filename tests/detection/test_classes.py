"""Placeholder slots and class filters: torchvision's COCO layout's "N/A" never reaches a user; names and ids select."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.config import ModelConfig
from fpn.detection import FasterRCNN
from fpn.detection.classes import PLACEHOLDER, keep_labels, label_mask, real_classes, select_labels
from fpn.engine.evaluate import label_to_category
from fpn.engine.inference import detect_files
from fpn.errors import ConfigError
from fpn.presets import COCO_CLASSES, preset, r50_fpn

# COCO's ids that torchvision's 91-slot layout keeps for categories COCO never used
COCO_UNUSED = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]


def test_the_coco_layout_has_80_classes_in_90_slots():
    assert len(COCO_CLASSES) == 90
    assert [i for i, name in enumerate(COCO_CLASSES, start=1) if name == PLACEHOLDER] == COCO_UNUSED
    assert len(real_classes(COCO_CLASSES)) == 80 and PLACEHOLDER not in real_classes(COCO_CLASSES)
    mask = label_mask(r50_fpn())
    assert mask.shape == (91,) and not mask[0] and int(mask.sum()) == 80
    assert not mask[COCO_UNUSED].any()


def test_names_and_ids_select_labels():
    config = r50_fpn()
    # exact names, names as typed (case, underscores), ids as ints or digit strings; duplicates once
    assert select_labels(config, ["person", "Traffic_Light", 3, "3", " dog "]) == [1, 10, 3, 18]
    config = ModelConfig(class_names=["cat", "7", "dog"], category_ids=[17, 40, 18])
    # a class called "7" is that class; other digits are the model's category ids, not labels
    assert select_labels(config, ["7", "18", 17]) == [2, 3, 1]


@pytest.mark.parametrize("token", ["N/A", "12", 83])
def test_a_placeholder_slot_cannot_be_selected(token):
    with pytest.raises(ConfigError, match="unused slot") as exc:
        select_labels(r50_fpn(), ["person", token], what="--classes")
    assert str(exc.value).startswith("--classes: ") and "\n" not in str(exc.value)


@pytest.mark.parametrize(("token", "kind"), [("zebr", "class"), ("91", "category id"), (0, "category id")])
def test_an_unknown_class_is_one_line_listing_the_model_classes(token, kind):
    with pytest.raises(ConfigError) as exc:
        select_labels(r50_fpn(), [token], what="--classes")
    message = str(exc.value)
    assert message.startswith(f"--classes: the model has no {kind} {str(token)!r}; its classes: person, bicycle")
    assert "\n" not in message and PLACEHOLDER not in message and message.endswith("toothbrush")


def test_no_class_at_all_is_refused():
    with pytest.raises(ConfigError, match="no class given"):
        select_labels(r50_fpn(), [])


def test_keep_labels_drops_what_the_mask_refuses():
    detections = {"boxes": torch.rand(4, 4), "scores": torch.rand(4), "labels": torch.tensor([1, 2, 3, 2])}
    kept = keep_labels(detections, torch.tensor([False, True, False, True]))
    assert kept["labels"].tolist() == [1, 3]
    assert torch.equal(kept["boxes"], detections["boxes"][[0, 2]])


# ---------------------------------------------------------------------------------- a model with a placeholder


@pytest.fixture(scope="module")
def slotted():
    """An untrained micro model whose label 2 is a placeholder slot: it scores every slot at random."""
    torch.manual_seed(0)
    config = preset("micro-fpn")
    config.class_names = ["cat", PLACEHOLDER, "dog"]
    config.roi_heads.score_thresh = 0.0
    return FasterRCNN(config).eval()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def test_the_untrained_model_does_score_its_placeholder_slot(slotted, photo):
    # What the tests below rely on: without the filter, placeholder detections would reach the outputs.
    from fpn.data.images import load_image

    with torch.inference_mode():
        raw = slotted([load_image(photo)])[0]
    assert (raw["labels"] == 2).any()


def test_detect_files_never_yields_a_placeholder(slotted, photo):
    (result,) = detect_files(slotted, [photo], device=torch.device("cpu"), winograd=False)
    assert result.records and 2 not in result.detections["labels"].tolist()  # what pictures draw
    assert {r["category"] for r in result.records} <= {"cat", "dog"}
    assert all(r["category_id"] != 2 for r in result.records)


def test_detect_files_filters_classes_for_a_python_caller(photo):
    torch.manual_seed(0)
    config = preset("micro-fpn")
    config.class_names, config.category_ids = ["cat", "dog"], [17, 18]
    config.roi_heads.score_thresh = 0.0
    model = FasterRCNN(config)
    (result,) = detect_files(model, [photo], device=torch.device("cpu"), winograd=False, classes=["dog"])
    assert result.records and {r["category"] for r in result.records} == {"dog"}
    (result,) = detect_files(model, [photo], device=torch.device("cpu"), classes=[17])
    assert result.records and {r["category_id"] for r in result.records} == {17}
    with pytest.raises(ConfigError, match="no class 'zebra'; its classes: cat, dog"):
        next(detect_files(model, [photo / "never_read.png"], device=torch.device("cpu"), classes=["zebra"]))


def test_fpn_show_counts_and_draws_no_placeholder(slotted, photo):
    from fpn.data.images import load_image
    from fpn.viz.show import inspect_image

    inspection = inspect_image(slotted, load_image(photo))
    labels = inspection.detections["labels"].tolist()
    assert labels and 2 not in labels
    assert sum(row["detections"] for row in inspection.counts.values()) == len(labels)


def test_eval_maps_no_placeholder_even_to_a_class_of_that_name():
    dataset = SimpleNamespace(names=["person", PLACEHOLDER], category_ids=[1, 12], source="odd.json")
    assert label_to_category(COCO_CLASSES, dataset) == {1: 1}
