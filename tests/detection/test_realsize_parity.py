"""torchvision's detections at the sizes users run: r50-fpn at 800 px on photo-sized images.

tools/reference/make_realsize_goldens.py ran torchvision's ``fasterrcnn_resnet50_fpn`` (FrozenBatchNorm eps 0,
800 / 1333 px, as with its COCO checkpoint) on the five images of ``drawn_photos.PHOTO_SPECS`` (shorter sides
333..997 px) with the goldens' deterministic weights. Here the same weights, written as a torchvision-layout
``.pth`` and read by ``load_detector`` with no override, run every inference path of ``fpn``: plain, optimized
(folded BatchNorms, channels-last, fused residual blocks, Winograd), optimized with direct convolutions, each
inside and outside ``torch.inference_mode()``, single images and a padded batch of three sizes. At 320 px
(test_torchvision_parity.py) the optimized paths engage on few layers; at these sizes all of them do.

Detections are compared as sets (same count, each matched one-to-one to a golden detection of the same label):
neighbouring scores come within 2e-7 of each other, so the last bit of a convolution can swap two of them.
The goldens record the score gap at the 100-detection cut (at least 1.5e-4), above the score tolerance.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from realsize import assert_same_detections, golden, photo_tensor, write_torchvision_r50

from fpn.detection.checkpoint import load_detector

pytestmark = pytest.mark.real

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


@pytest.fixture(scope="module")
def expected():
    return golden()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_torchvision_r50(tmp_path_factory.mktemp("r50") / "fasterrcnn_resnet50_fpn_deterministic.pth")


def build(checkpoint, mode: str, optimize: dict | None):
    """The detector as ``fpn detect`` builds it: loaded, then (optionally) optimized inside ``mode``."""
    model, _ = load_detector(checkpoint)
    if optimize is not None:
        with MODES[mode]():
            model.optimize_for_inference(**optimize)
    return model


def detect(model, names: list[str], mode: str) -> list[dict[str, torch.Tensor]]:
    with MODES[mode]():
        return model([photo_tensor(name) for name in names])


@pytest.fixture(scope="module")
def plain(checkpoint):
    return build(checkpoint, "inference_mode", None)


@pytest.fixture(scope="module", params=sorted(MODES))
def optimized(checkpoint, request):
    """Winograd and folded weights, made inside and outside inference mode (fpn detect makes them inside)."""
    return request.param, build(checkpoint, request.param, {})


@pytest.mark.parametrize("name", ["photo0_333x500.png", "photo3_997x1058.png", "photo4_750x1333.png"])
def test_plain_path_matches_torchvision(plain, expected, name):
    (ours,) = detect(plain, [name], "inference_mode")
    assert_same_detections(ours, expected["single"][name])


@pytest.mark.parametrize(
    "name", ["photo0_333x500.png", "photo1_640x480.png", "photo2_400x400.png", "photo3_997x1058.png"]
)
def test_optimized_path_matches_torchvision(optimized, expected, name):
    mode, model = optimized
    # Run it in both modes: weights made in one mode are used in the other by a user's own loop.
    for run_mode in (mode, "no_grad" if mode == "inference_mode" else "inference_mode"):
        (ours,) = detect(model, [name], run_mode)
        assert_same_detections(ours, expected["single"][name])


def test_optimized_path_without_winograd_matches_torchvision(checkpoint, expected):
    model = build(checkpoint, "inference_mode", {"winograd": False})
    (ours,) = detect(model, ["photo4_750x1333.png"], "inference_mode")
    assert_same_detections(ours, expected["single"]["photo4_750x1333.png"])


def test_winograd_engages_at_real_sizes(checkpoint):
    """The fast path is what is tested: its convolutions run at 800 px (and not at the 96 px of smoke tests)."""
    from fpn.layers.winograd import WinogradConv2d

    model = build(checkpoint, "inference_mode", {})
    swapped = [m for m in model.modules() if isinstance(m, WinogradConv2d)]
    assert len(swapped) >= 10
    ran = []
    original = WinogradConv2d.transformed_weight
    with contextlib.ExitStack() as stack:
        stack.callback(setattr, WinogradConv2d, "transformed_weight", original)
        WinogradConv2d.transformed_weight = lambda self: ran.append(self) or original(self)
        detect(model, ["photo2_400x400.png"], "inference_mode")
    # Every swapped convolution took the Winograd path (none fell back to the direct one for too few tiles).
    assert len(set(map(id, ran))) == len(swapped), "the Winograd path did not run at 800 px"


@pytest.mark.parametrize("optimize", [None, {}], ids=["plain", "optimized"])
def test_batch_of_three_sizes_matches_torchvision(checkpoint, expected, optimize):
    model = build(checkpoint, "inference_mode", optimize)
    names = expected["metadata"]["batch"]
    for name, ours in zip(names, detect(model, names, "inference_mode")):
        assert_same_detections(ours, expected["batched"][name])


def test_optimized_path_with_autograd_on_matches_torchvision(optimized, expected):
    """No context at all, as in a user's notebook: the fused in-place blocks must not break autograd."""
    _, model = optimized
    (ours,) = model([photo_tensor("photo2_400x400.png")])
    assert_same_detections({k: v.detach() for k, v in ours.items()}, expected["single"]["photo2_400x400.png"])


def test_bf16_gives_the_same_detections_in_every_mode(checkpoint):
    model = build(checkpoint, "inference_mode", {"dtype": torch.bfloat16})
    runs = [detect(model, ["photo2_400x400.png"], mode)[0] for mode in ("inference_mode", "no_grad")]
    runs.append({k: v.detach() for k, v in model([photo_tensor("photo2_400x400.png")])[0].items()})
    assert len(runs[0]["boxes"]) > 0
    for other in runs[1:]:
        for key in ("boxes", "scores", "labels", "levels"):
            assert torch.equal(runs[0][key], other[key]), key
