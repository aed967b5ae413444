"""Generate ``tests/golden/fasterrcnn_realsize.pt``: torchvision's detections on photo-sized images at 800 px.

Run with the reference venv (see ``tools/reference/README.md``)::

    /tmp/refvenv/bin/python tools/reference/make_realsize_goldens.py

The model is ``fasterrcnn_resnet50_fpn`` exactly as torchvision builds it for its COCO checkpoint: a
``FrozenBatchNorm2d`` backbone with eps 0, ``min_size=800, max_size=1333``, 91 classes, eval mode, with
``deterministic_state_dict`` weights. This is what ``fpn detect --weights <torchvision .pth>`` runs with default
flags, so the tests can compare the CLI's output with these detections directly. The images are the ones of
``drawn_photos.PHOTO_SPECS`` (shorter sides 333..997 px, several aspect ratios): at these sizes every optimized
path of ``fpn`` engages (the 320 px goldens of ``make_detector_goldens.py`` reach few of them).

Only final detections are stored (boxes in original pixels, scores, labels), with the margins that decide how
strict a comparison can be: the score gap at the 100-detection cut and between neighbours.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deterministic_weights import deterministic_state_dict, state_dict_shapes
from drawn_photos import PHOTO_SPECS, draw_photo, photo_sha256

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "golden" / "fasterrcnn_realsize.pt"
BATCH = ["photo0_333x500.png", "photo1_640x480.png", "photo3_997x1058.png"]
"""Images run together as one padded batch (three different sizes and aspect ratios)."""


def build_model() -> FasterRCNN:
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = FasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91)  # min_size 800, max_size 1333
    model.load_state_dict(deterministic_state_dict(state_dict_shapes(model)))
    for module in model.modules():  # what fasterrcnn_resnet50_fpn does with its COCO weights
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 0.0
    return model.eval()


def margins(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    ordered = scores.sort(descending=True).values
    return {
        "count": int(scores.numel()),
        "min_consecutive_score_gap": float((ordered[:-1] - ordered[1:]).min()) if scores.numel() > 1 else math.inf,
        "min_score_minus_thresh": float((scores - 0.05).min()) if scores.numel() else math.inf,
        "distinct_labels": int(labels.unique().numel()),
    }


def cut_gap(model: FasterRCNN, images: list[torch.Tensor]) -> list[float]:
    """Per image, the score gap between the last detection kept (the 100th) and the first one cut."""
    keep = model.roi_heads.detections_per_img
    model.roi_heads.detections_per_img = 10 * keep
    try:
        uncut = model(images)
    finally:
        model.roi_heads.detections_per_img = keep
    gaps = []
    for detection in uncut:
        ordered = detection["scores"].sort(descending=True).values
        gaps.append(float(ordered[keep - 1] - ordered[keep]) if ordered.numel() > keep else math.inf)
    return gaps


def record(detection: dict[str, torch.Tensor], gap: float) -> dict[str, Any]:
    out = {key: detection[key].clone() for key in ("boxes", "scores", "labels")}
    out["margins"] = {**margins(out["scores"], out["labels"]), "cut_score_gap": gap}
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    model = build_model()
    images = {name: draw_photo(*spec) for name, spec in PHOTO_SPECS.items()}
    floats = {name: image.float() / 255.0 for name, image in images.items()}
    single = {}
    for name, image in floats.items():
        single[name] = record(model([image])[0], cut_gap(model, [image])[0])
        print(name, single[name]["margins"])
    batch = [floats[n] for n in BATCH]
    batched = {name: record(d, g) for name, d, g in zip(BATCH, model(batch), cut_gap(model, batch))}
    for name in BATCH:
        print("batched", name, batched[name]["margins"])
    metadata = {
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "builder": "FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91)",
        "bn_eps": 0.0,
        "min_size": 800,
        "max_size": 1333,
        "weights": "deterministic_state_dict(state_dict_shapes(model))",
        "images": {
            name: {"spec": list(spec), "sha256": photo_sha256(images[name])} for name, spec in PHOTO_SPECS.items()
        },
        "image_loading": "drawn_photos.draw_photo(...) uint8 [3,H,W] -> float32 / 255.0 (as a PNG read by fpn)",
        "batch": BATCH,
    }
    torch.save({"metadata": metadata, "single": single, "batched": batched}, args.out)
    torch.load(args.out, weights_only=True)  # the test suite loads it this way
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
