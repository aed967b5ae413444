"""Generate ``tests/golden/fcos_parity.pt`` and ``tests/golden/fcos_realsize.pt`` with torchvision's FCOS.

Run with the reference venv (see ``tools/reference/README.md``)::

    /tmp/ref/refvenv/bin/python tools/reference/make_fcos_goldens.py            # both, ~4 min on 2 cores

The model is ``fcos_resnet50_fpn`` as torchvision builds it for its COCO checkpoint: ResNet-50 with
``FrozenBatchNorm2d`` (eps 1e-5: FCOS's builder calls no ``overwrite_eps``), C3-C5 into the FPN,
``LastLevelP6P7(256, 256)`` (P6 from P5), 91 classes, weights from ``fcos_weights.fcos_state_dict`` (the
deterministic weights with the predictors arranged so that detections are decided by clear margins).

* ``fcos_parity.pt`` (fast tier): ``min_size=320, max_size=512`` on the three PNGs of ``tests/golden/images``
  (odd sizes), each alone and as one batch; and the training losses of a batch of two with target boxes
  (``LOSS_TARGETS``, several sizes, nested and overlapping boxes), with each location's assigned box.
* ``fcos_realsize.pt`` (real tier): ``800 / 1333`` on the photos of ``drawn_photos.PHOTO_SPECS``, alone and
  three as one batch: what ``fpn detect --weights <torchvision fcos .pth>`` runs with default flags.

Detections are recorded with their margins: the score gap at the 100-detection cut (decides the set under a
1e-4 score tolerance) and each level's count of candidates above the 0.2 threshold (under 1000: the top-k cut
never acts).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from PIL import Image
from torchvision.models import resnet50
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deterministic_weights import state_dict_shapes
from drawn_photos import PHOTO_SPECS, draw_photo, photo_sha256
from fcos_weights import fcos_state_dict

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
IMAGES = ["img0_237x311.png", "img1_300x199.png", "img2_181x256.png"]
PHOTO_BATCH = ["photo0_333x500.png", "photo1_640x480.png", "photo3_997x1058.png"]
KEEP = 100

#: Per image of the loss batch (img0, img1): boxes (original pixels, xyxy) and labels.
LOSS_TARGETS = [
    (
        [[10, 12, 60, 70], [100, 40, 300, 220], [30, 30, 45, 48], [120, 60, 200, 150], [5, 150, 90, 230]],
        [1, 3, 17, 3, 62],
    ),
    ([[20, 30, 180, 280], [50, 60, 90, 120], [60, 70, 85, 110], [0, 0, 199, 300]], [5, 1, 2, 7]),
]


def build_model(min_size: int, max_size: int) -> FCOS:
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = FCOS(backbone, num_classes=91, min_size=min_size, max_size=max_size)
    model.load_state_dict(fcos_state_dict(state_dict_shapes(model)))
    return model.eval()


def read_png(name: str) -> torch.Tensor:
    """As ``fpn.data.images.load_image`` reads it: RGB uint8 -> float32 [3, H, W] / 255."""
    image = Image.open(GOLDEN / "images" / name).convert("RGB")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0


def run(model: FCOS, images: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Detections (the first KEEP) with their margins, from one run that keeps 10 x KEEP."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.head.register_forward_hook(lambda module, args, out: captured.update(out))
    model.detections_per_img = 10 * KEEP
    try:
        with torch.no_grad():
            uncut = model(images)
    finally:
        model.detections_per_img = KEEP
        hook.remove()
    features = [h * w for h, w in level_shapes(model, images)]
    scores = torch.sqrt(torch.sigmoid(captured["cls_logits"]) * torch.sigmoid(captured["bbox_ctrness"]))
    records = []
    for index, detection in enumerate(uncut):
        ordered = detection["scores"]
        per_level = [int((chunk > model.score_thresh).sum()) for chunk in scores[index].split(features)]
        record = {key: detection[key][:KEEP].clone() for key in ("boxes", "scores", "labels")}
        record["margins"] = {
            "count": int(record["scores"].numel()),
            "uncut_count": int(ordered.numel()),
            "cut_score_gap": float(ordered[KEEP - 1] - ordered[KEEP]) if ordered.numel() > KEEP else math.inf,
            "cut_score": float(ordered[min(KEEP, ordered.numel()) - 1]) if ordered.numel() else math.nan,
            "level_candidates": per_level,
            # The nearest any (location, class) score comes to the threshold: a flip there needs that much.
            "min_abs_score_minus_thresh": float((scores[index] - model.score_thresh).abs().min()),
            "distinct_labels": int(record["labels"].unique().numel()),
        }
        records.append(record)
    return records


def level_shapes(model: FCOS, images: list[torch.Tensor]) -> list[tuple[int, int]]:
    batch, _ = model.transform(images)
    with torch.no_grad():
        features = model.backbone(batch.tensors)
    return [tuple(f.shape[-2:]) for f in features.values()]


def losses(model: FCOS) -> dict[str, Any]:
    """Training losses of img0 + img1 with LOSS_TARGETS, and every location's assigned box (-1: none)."""
    images = [read_png(IMAGES[0]), read_png(IMAGES[1])]
    targets = [
        {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
        for boxes, labels in LOSS_TARGETS
    ]
    matched: list[torch.Tensor] = []
    compute = model.head.compute_loss

    def keep_matches(targets, head_outputs, anchors, matched_idxs):
        matched.extend(m.clone() for m in matched_idxs)
        return compute(targets, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = keep_matches
    model.train()
    try:
        with torch.no_grad():
            values = model(images, targets)
    finally:
        model.eval()
        del model.head.compute_loss
    return {
        "images": IMAGES[:2],
        "targets": [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets],
        "losses": {key: float(value) for key, value in values.items()},
        "matched": matched,
        "positives": [int((m >= 0).sum()) for m in matched],
    }


def metadata(model: FCOS, **extra: Any) -> dict[str, Any]:
    return {
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "builder": "FCOS(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3, returned_layers=[2, 3, 4], "
        "extra_blocks=LastLevelP6P7(256, 256)), num_classes=91)",
        "bn_eps": 1e-5,
        "weights": "fcos_weights.fcos_state_dict(state_dict_shapes(model))",
        "keys": [[key, list(value.shape)] for key, value in model.state_dict().items()],
        **extra,
    }


def parity(out: Path) -> None:
    model = build_model(320, 512)
    images = [read_png(name) for name in IMAGES]
    single = [run(model, [image])[0] for image in images]
    batched = run(model, images)
    for name, record in zip(IMAGES, single):
        print(name, record["margins"])
    loss = losses(model)
    print("losses", loss["losses"], "positives", loss["positives"])
    meta = metadata(model, min_size=320, max_size=512, image_files=IMAGES)
    save({"metadata": meta, "single": single, "batched": batched, "loss": loss}, out)


def realsize(out: Path) -> None:
    model = build_model(800, 1333)
    photos = {name: draw_photo(*spec) for name, spec in PHOTO_SPECS.items()}
    floats = {name: image.float() / 255.0 for name, image in photos.items()}
    single = {name: run(model, [image])[0] for name, image in floats.items()}
    for name, record in single.items():
        print(name, record["margins"])
    batched = dict(zip(PHOTO_BATCH, run(model, [floats[name] for name in PHOTO_BATCH])))
    images = {name: {"spec": list(spec), "sha256": photo_sha256(photos[name])} for name, spec in PHOTO_SPECS.items()}
    meta = metadata(model, min_size=800, max_size=1333, images=images, batch=PHOTO_BATCH)
    save({"metadata": meta, "single": single, "batched": batched}, out)


def save(payload: dict[str, Any], out: Path) -> None:
    torch.save(payload, out)
    torch.load(out, weights_only=True)  # the test suite loads it this way
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("parity", "realsize", "both"), default="both")
    parser.add_argument("--out-dir", type=Path, default=GOLDEN)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.which in ("parity", "both"):
        parity(args.out_dir / "fcos_parity.pt")
    if args.which in ("realsize", "both"):
        realsize(args.out_dir / "fcos_realsize.pt")


if __name__ == "__main__":
    main()
