"""Same detections as torchvision's fasterrcnn_resnet50_fpn, without torchvision.

tools/reference/make_detector_goldens.py ran torchvision 0.28 on the three PNGs in tests/golden/images with
weights rebuilt from each key's name and shape (tools/reference/deterministic_weights.py) and saved its
proposals and detections. Here the same weights are written as a torchvision-layout .pth, loaded through
``load_detector`` (layout detection + key conversion), and run on the same images.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from fpn.data.images import load_image
from fpn.detection.checkpoint import load_detector

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tools" / "reference"))
from deterministic_weights import deterministic_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN / "fasterrcnn_parity.pt", weights_only=True)


def load_golden_model(golden, folder):
    """The goldens' weights written as a torchvision-layout .pth and loaded through ``load_detector``."""
    keys = json.loads((GOLDEN / "fasterrcnn_resnet50_fpn_keys.json").read_text())["fasterrcnn_resnet50_fpn_frozen_bn"]
    path = folder / "fasterrcnn_deterministic.pth"
    torch.save(deterministic_state_dict({key: tuple(shape) for key, shape in keys}), path)
    transform = golden["metadata"]["transform"]
    overrides = [f"transform.min_size={list(transform['min_size'])}", f"transform.max_size={transform['max_size']}"]
    # The goldens were made with FrozenBatchNorm2d's default eps (1e-5), not the 0 torchvision uses with
    # its COCO checkpoint (and which load_detector therefore picks for this layout).
    overrides.append("backbone.bn_eps=1e-5")
    model, _ = load_detector(path, config_overrides=overrides)
    return model


@pytest.fixture(scope="module")
def model(golden, tmp_path_factory):
    return load_golden_model(golden, tmp_path_factory.mktemp("tv"))


@pytest.fixture(scope="module")
def optimized(golden, tmp_path_factory):
    """The same weights with frozen BatchNorms folded and channels-last layout (the fast inference path)."""
    return load_golden_model(golden, tmp_path_factory.mktemp("tv")).optimize_for_inference()


@pytest.fixture(scope="module")
def images(golden):
    return [load_image(GOLDEN / "images" / name) for name in golden["metadata"]["image_files"]]


def run(model, images):
    """Detections plus the RPN's proposals (resized-image pixels), captured from the RoI heads' input."""
    captured = []
    hook = model.roi_heads.register_forward_pre_hook(lambda module, args: captured.append(args[1]))
    try:
        with torch.inference_mode():
            detections = model(images)
    finally:
        hook.remove()
    return captured[0], detections


def same_proposals(ours, theirs):
    """The same 1000 boxes, each within 0.01 px of exactly one of theirs.

    Proposals are compared as a set: their scores come within 1e-7 of each other, so the last bit of a
    convolution (which depends on the thread count) can swap two neighbours in the ranking.
    """
    assert ours.shape == theirs.shape
    distance = torch.cdist(ours.double(), theirs.double(), p=float("inf"))
    nearest = distance.min(dim=1)
    assert nearest.values.max() <= 0.01
    assert nearest.indices.unique().numel() == len(theirs)  # a one-to-one match
    # Where the order differs, it differs only by neighbours swapping places.
    assert (nearest.indices - torch.arange(len(theirs))).abs().max() <= 2


def compare(expected, proposals, detection):
    same_proposals(proposals, expected["proposals"])
    assert torch.equal(detection["labels"], expected["labels"])
    torch.testing.assert_close(detection["boxes"], expected["boxes"], rtol=0, atol=0.01)
    torch.testing.assert_close(detection["scores"], expected["scores"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_optimized_path_matches_torchvision(optimized, images, golden, index):
    proposals, detections = run(optimized, [images[index]])
    compare(golden["single"][index], proposals[0], detections[0])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_single_image_matches_torchvision(model, images, golden, index):
    proposals, detections = run(model, [images[index]])
    expected = golden["single"][index]
    assert len(detections[0]["boxes"]) == len(expected["boxes"]) > 0
    compare(expected, proposals[0], detections[0])


def test_batch_of_odd_sizes_matches_torchvision(model, images, golden):
    proposals, detections = run(model, images)
    for index, expected in enumerate(golden["batched"]):
        compare(expected, proposals[index], detections[index])


def test_torchvision_layout_defaults_to_torchvisions_coco_eps(model, tmp_path):
    keys = json.loads((GOLDEN / "fasterrcnn_resnet50_fpn_keys.json").read_text())["fasterrcnn_resnet50_fpn_frozen_bn"]
    path = tmp_path / "coco.pth"
    torch.save({key: torch.zeros(shape) for key, shape in keys}, path)
    loaded, _ = load_detector(path)
    assert loaded.config.backbone.bn_eps == 0.0 and loaded.backbone.bn1.eps == 0.0


def test_coco_names_come_with_the_torchvision_layout(model):
    assert model.config.num_classes == 91
    assert model.config.class_names[0] == "person" and model.config.class_names[89] == "toothbrush"
