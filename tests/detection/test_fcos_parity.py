"""Same detections and losses as torchvision's fcos_resnet50_fpn, without torchvision (fast tier: 320 px).

tools/reference/make_fcos_goldens.py ran torchvision's FCOS (FrozenBatchNorm eps 1e-5, as for its COCO checkpoint)
with arranged deterministic weights on the three odd-sized PNGs of tests/golden/images, alone and batched, and
recorded its detections, and the training losses of two images with boxes, with the box assigned to every
location. Here the same weights, written as a torchvision-layout .pth, are read by ``load_detector`` (the layout
recognised from its keys) and run plainly and optimized (folded BatchNorms, channels-last, Winograd).
"""

from __future__ import annotations

import pytest
import torch
from fcos_goldens import GOLDEN, golden, write_torchvision_fcos
from realsize import assert_same_detections

from fpn.data.images import load_image
from fpn.detection import FCOS
from fpn.detection.checkpoint import load_detector, read_detector


@pytest.fixture(scope="module")
def expected():
    return golden("fcos_parity")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_torchvision_fcos(tmp_path_factory.mktemp("fcos") / "fcos_resnet50_fpn_deterministic.pth")


def load(checkpoint, expected):
    meta = expected["metadata"]
    overrides = [f"transform.min_size=[{meta['min_size']}]", f"transform.max_size={meta['max_size']}"]
    model, _ = load_detector(checkpoint, config_overrides=overrides)
    return model


@pytest.fixture(scope="module")
def model(checkpoint, expected):
    return load(checkpoint, expected)


@pytest.fixture(scope="module")
def images(expected):
    return [load_image(GOLDEN / "images" / name) for name in expected["metadata"]["image_files"]]


def test_the_layout_is_recognised_as_fcos_with_torchvisions_eps(checkpoint, model):
    assert read_detector(checkpoint).kind == "torchvision"
    assert isinstance(model, FCOS) and model.config.detector == "fcos"
    assert model.config.backbone.bn_eps == 1e-5 and model.backbone.bn1.eps == 1e-5
    assert [lv.name for lv in model.levels] == ["p3", "p4", "p5", "p6", "p7"]
    assert model.config.num_classes == 91 and model.config.class_names[0] == "person"


def test_the_golden_is_decided_by_clear_margins(expected):
    for record in [*expected["single"], *expected["batched"]]:
        margins = record["margins"]
        # The per-level top-k cut (1000) either never acts or (padded batches: P3's padding adds candidates) drops
        # the lowest of a level's candidates, which the 100-detection cap, far above the 0.2 threshold, drops anyway.
        assert max(margins["level_candidates"]) < 1000 or (margins["uncut_count"] > 100 and margins["cut_score"] > 0.3)
        # Scores here differ from torchvision's by ~1e-6 (fp32 rounding, Winograd): these gaps decide the sets (the
        # threshold's where the 100-detection cap does not act: above it, near-threshold candidates are cut anyway).
        assert margins["cut_score_gap"] > 2e-5
        assert margins["uncut_count"] > 100 or margins["min_abs_score_minus_thresh"] > 2e-5
    assert sum(n > 0 for n in expected["single"][1]["margins"]["level_candidates"]) >= 4


@pytest.mark.parametrize("index", [0, 1, 2])
def test_single_image_matches_torchvision(model, images, expected, index):
    with torch.inference_mode():
        (ours,) = model([images[index]])
    assert len(ours["boxes"]) > 50
    assert_same_detections(ours, expected["single"][index])


def test_batch_of_odd_sizes_matches_torchvision(model, images, expected):
    with torch.inference_mode():
        outputs = model(images)
    for ours, theirs in zip(outputs, expected["batched"]):
        assert_same_detections(ours, theirs)


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_optimized_path_matches_torchvision(checkpoint, images, expected, mode):
    model = load(checkpoint, expected)
    with mode():
        model.optimize_for_inference()
        (ours,) = model([images[0]])
    assert_same_detections(ours, expected["single"][0])


def test_training_losses_and_assignment_match_torchvision(model, images, expected):
    loss = expected["loss"]
    captured: list[torch.Tensor] = []
    matches = model.decoder.matches

    def keep(*args):
        captured.extend(matches(*args))
        return captured

    model.decoder.matches = keep
    model.train()
    try:
        with torch.no_grad():
            ours = model([images[0], images[1]], [dict(t) for t in loss["targets"]])
    finally:
        model.eval()
        del model.decoder.matches
    for mine, theirs in zip(captured, loss["matched"]):
        assert torch.equal(mine, theirs)
    names = {"loss_classifier": "classification", "loss_box_giou": "bbox_regression", "loss_centerness": "bbox_ctrness"}
    for key, theirs in names.items():
        assert abs(float(ours[key]) - loss["losses"][theirs]) <= 1e-4 * max(1.0, abs(loss["losses"][theirs])), key
