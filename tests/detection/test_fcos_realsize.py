"""torchvision's FCOS detections at the sizes users run: fcos-r50 at 800 px on photo-sized images (real tier).

tools/reference/make_fcos_goldens.py ran torchvision's ``fcos_resnet50_fpn`` (FrozenBatchNorm eps 1e-5, 800 / 1333
px) on the photos of ``drawn_photos.PHOTO_SPECS`` with the goldens' weights. Here the same weights, written as a
torchvision-layout ``.pth`` and read with no override, run the plain and optimized paths (the latter made inside
and outside ``torch.inference_mode()``), a padded batch of three sizes, bfloat16, and ``fpn detect`` with default
flags and ``--precision bf16``. Detections are compared as sets (``realsize.assert_same_detections``).
"""

from __future__ import annotations

import json

import pytest
import torch
from fcos_goldens import golden, write_torchvision_fcos
from realsize import BOX_TOL, SCORE_TOL, assert_same_detections, photo_tensor, write_photos

from fpn.cli import main
from fpn.detection.checkpoint import load_detector
from fpn.detection.classes import label_mask

pytestmark = pytest.mark.real

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


@pytest.fixture(scope="module")
def expected():
    return golden("fcos_realsize")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_torchvision_fcos(tmp_path_factory.mktemp("fcos") / "fcos_resnet50_fpn_coco.pth")


def build(checkpoint, mode: str, optimize: dict | None):
    model, _ = load_detector(checkpoint)
    if optimize is not None:
        with MODES[mode]():
            model.optimize_for_inference(**optimize)
    return model


def detect(model, names, mode="inference_mode"):
    with MODES[mode]():
        return model([photo_tensor(name) for name in names])


def test_plain_path_matches_torchvision(checkpoint, expected):
    (ours,) = detect(build(checkpoint, "inference_mode", None), ["photo3_997x1058.png"])
    assert_same_detections(ours, expected["single"]["photo3_997x1058.png"])
    assert len(set(ours["levels"].tolist())) >= 3  # the detections come from several levels


@pytest.mark.parametrize("mode", sorted(MODES))
def test_optimized_path_matches_torchvision(checkpoint, expected, mode):
    model = build(checkpoint, mode, {})
    for run_mode in MODES:  # weights made in one mode, run in either
        (ours,) = detect(model, ["photo4_750x1333.png"], run_mode)
        assert_same_detections(ours, expected["single"]["photo4_750x1333.png"])


def test_optimized_batch_of_three_sizes_matches_torchvision(checkpoint, expected):
    names = expected["metadata"]["batch"]
    for name, ours in zip(names, detect(build(checkpoint, "inference_mode", {}), names)):
        assert_same_detections(ours, expected["batched"][name])


def test_detect_cli_with_torchvisions_fcos(checkpoint, expected, tmp_path):
    """``fpn detect --weights <fcos .pth>`` with default flags gives torchvision's detections (less label 0 and
    COCO's unused slots, which fpn never reports); ``--precision bf16`` finds the confident ones."""
    names = ["photo2_400x400.png"]
    write_photos(tmp_path / "photos", names)
    runs = {"default": [], "bf16": ["--precision", "bf16"]}
    found = {}
    for run, flags in runs.items():
        output = tmp_path / f"{run}.json"
        args = ["detect", tmp_path / "photos", "--weights", checkpoint, "--output", output, "--score-thresh", 0]
        assert main([str(a) for a in [*args, *flags]]) == 0
        records = json.loads(output.read_text())["detections"]
        assert records and all(r["level"] in {"p3", "p4", "p5", "p6", "p7"} for r in records)
        boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float64)
        boxes[:, 2:] += boxes[:, :2]
        found[run] = {
            "boxes": boxes,
            "scores": torch.tensor([r["score"] for r in records], dtype=torch.float64),
            "labels": torch.tensor([r["category_id"] for r in records]),
        }
    theirs = expected["single"][names[0]]
    keep = label_mask(load_detector(checkpoint)[0].config)[theirs["labels"]]
    theirs = {key: theirs[key][keep] for key in ("boxes", "scores", "labels")}
    assert_same_detections(found["default"], theirs, BOX_TOL + 0.01, SCORE_TOL + 1e-5)  # + the JSON's rounding
    bf16 = found["bf16"]
    top = bf16["scores"].argsort(descending=True)[:20]
    distance = torch.cdist(bf16["boxes"][top], theirs["boxes"].double(), p=float("inf"))
    distance[bf16["labels"][top][:, None] != theirs["labels"][None, :]] = float("inf")
    assert (distance.min(dim=1).values <= 4.0).float().mean() >= 0.8
