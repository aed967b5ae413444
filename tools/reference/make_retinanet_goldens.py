"""Generate ``tests/golden/retinanet_parity.pt`` (torchvision's ``retinanet_resnet50_fpn`` v1 detections) and
``tests/golden/retinanet_resnet50_fpn_keys.json`` (its state-dict keys and shapes, as its COCO checkpoint has them).

Run with the reference venv (see ``tools/reference/README.md``)::

    /tmp/ref/refvenv/bin/python tools/reference/make_retinanet_goldens.py

The model is built as ``retinanet_resnet50_fpn`` builds it for its COCO checkpoint: a ``FrozenBatchNorm2d``
ResNet-50 with eps 0 (``overwrite_eps``), C3-C5 into the FPN, ``LastLevelP6P7(256, 256)`` (P6 from P5),
9 anchors per cell, 91 classes, eval mode, with :func:`retinanet_weights.retinanet_state_dict` weights (every
level finds something). The images are ``drawn_photos.PHOTO_SPECS``, redrawn bit for bit in the tests:

* ``real``: at 800 / 1333 px (what ``fpn detect --weights <torchvision .pth>`` runs), each image alone, and
  three of them as one padded batch;
* ``small``: at 320 / 512 px (the fast tier), each image alone and the same three as a batch.

Each record holds the detections (``boxes`` in original pixels, ``scores``, ``labels``), the pyramid level of
each (``levels``, 3..7: recomputed by running torchvision's own ``postprocess_detections`` one level at a time
over the same candidates, checked against its output), and the margins that decide how strict a comparison can
be: the score gap at the ``detections_per_img`` cut, the smallest distance of a candidate's score to the 0.05
threshold, and per level the count of scores above it (a level over 1000 also records the gap at its top-k cut).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models import resnet50
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deterministic_weights import state_dict_shapes
from drawn_photos import PHOTO_SPECS, draw_photo, photo_sha256
from retinanet_weights import retinanet_state_dict

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "golden" / "retinanet_parity.pt"
KEYS = REPO / "tests" / "golden" / "retinanet_resnet50_fpn_keys.json"
BATCH = ["photo0_333x500.png", "photo1_640x480.png", "photo3_997x1058.png"]
SIZES = {"real": (800, 1333), "small": (320, 512)}


def build_model() -> RetinaNet:
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = RetinaNet(backbone, num_classes=91)
    model.load_state_dict(retinanet_state_dict(state_dict_shapes(model)))
    for module in model.modules():  # what retinanet_resnet50_fpn does with its COCO weights
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 0.0
    return model.eval()


class Recorder:
    """Wraps ``postprocess_detections``: the margins of its inputs, and each detection's level."""

    def __init__(self, model: RetinaNet) -> None:
        self.model = model
        self.original = model.postprocess_detections
        self.records: list[dict[str, Any]] = []
        model.postprocess_detections = self

    def __call__(self, head_outputs, anchors, image_shapes):
        model = self.model
        detections = self.original(head_outputs, anchors, image_shapes)
        thresh, topk, cap = model.score_thresh, model.topk_candidates, model.detections_per_img
        levels = len(head_outputs["cls_logits"])
        for index, detection in enumerate(detections):
            probs = [torch.sigmoid(cl[index]).flatten() for cl in head_outputs["cls_logits"]]
            above = [int((p > thresh).sum()) for p in probs]
            topk_gaps = []
            for p in probs:
                if p.numel() > topk:
                    ordered = p.topk(topk + 1).values
                    topk_gaps.append(float(ordered[topk - 1] - ordered[topk]) if ordered[topk] > thresh else math.inf)
            # Each level alone, uncapped: its candidates after top-k and decoding, to find each detection's level.
            model.detections_per_img = 10**6
            model.nms_thresh = 1.0 + 1e-6  # nothing suppressed: every candidate comes back
            try:
                per_level = []
                for k in range(levels):
                    one = {key: [value[k][index : index + 1]] for key, value in head_outputs.items()}
                    per_level.append(self.original(one, [[anchors[index][k]]], [image_shapes[index]])[0])
                uncut = self.original(
                    {key: [v[index : index + 1] for v in value] for key, value in head_outputs.items()},
                    [anchors[index]],
                    [image_shapes[index]],
                )[0]
            finally:
                model.detections_per_img, model.nms_thresh = cap, 0.5
            level = torch.full_like(detection["labels"], -1)
            for k, found in enumerate(per_level):
                same = (detection["boxes"][:, None] == found["boxes"][None]).all(-1)
                same &= detection["labels"][:, None] == found["labels"][None]
                same &= detection["scores"][:, None] == found["scores"][None]
                level[same.any(1)] = k + 3  # P3..P7
            assert (level >= 0).all(), "a detection matched no level's candidates"
            # The score gap at the cap, over the candidates that survive NMS.
            nms = self.original_nms(head_outputs, anchors, image_shapes, index)
            ordered = nms.sort(descending=True).values
            cut_gap = float(ordered[cap - 1] - ordered[cap]) if ordered.numel() > cap else math.inf
            scores = uncut["scores"]
            self.records.append(
                {
                    "levels": level,
                    "margins": {
                        "above_thresh_per_level": above,
                        "topk_cut_gaps": topk_gaps,
                        "min_candidate_score_minus_thresh": float((scores - thresh).min())
                        if scores.numel()
                        else math.inf,
                        "after_nms": int(nms.numel()),
                        "cut_score_gap": cut_gap,
                    },
                }
            )
        return detections

    def original_nms(self, head_outputs, anchors, image_shapes, index) -> torch.Tensor:
        """Scores of one image's detections with no cap (NMS applied)."""
        model = self.model
        cap = model.detections_per_img
        model.detections_per_img = 10**6
        try:
            out = self.original(
                {key: [v[index : index + 1] for v in value] for key, value in head_outputs.items()},
                [anchors[index]],
                [image_shapes[index]],
            )[0]
        finally:
            model.detections_per_img = cap
        return out["scores"]


def record(detection: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    out = {key: detection[key].clone() for key in ("boxes", "scores", "labels")}
    out.update(extra)
    out["margins"]["count"] = int(out["scores"].numel())
    out["margins"]["distinct_labels"] = int(out["labels"].unique().numel())
    out["margins"]["per_level"] = {f"p{k}": int((extra["levels"] == k).sum()) for k in range(3, 8)}
    return out


@torch.no_grad()
def run(model: RetinaNet, recorder: Recorder, images: list[torch.Tensor]) -> list[dict[str, Any]]:
    recorder.records = []
    detections = model(images)
    return [record(d, r) for d, r in zip(detections, recorder.records)]


def write_keys(model: RetinaNet, path: Path) -> None:
    """The COCO checkpoint's key layout: torchvision's state-dict order, FrozenBatchNorm (no counters)."""
    keys = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    meta = {"torchvision_version": str(torchvision.__version__), "builder": "see make_retinanet_goldens.build_model"}
    path.write_text(json.dumps({"_meta": meta, "retinanet_resnet50_fpn_frozen_bn": keys}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keys", type=Path, default=KEYS)
    args = parser.parse_args()
    torch.set_num_threads(2)

    model = build_model()
    write_keys(model, args.keys)
    recorder = Recorder(model)
    images = {name: draw_photo(*spec) for name, spec in PHOTO_SPECS.items()}
    floats = {name: image.float() / 255.0 for name, image in images.items()}
    result: dict[str, Any] = {}
    for tier, (min_size, max_size) in SIZES.items():
        model.transform.min_size, model.transform.max_size = (min_size,), max_size
        single = {name: run(model, recorder, [image])[0] for name, image in floats.items()}
        for name, rec in single.items():
            print(tier, name, rec["margins"])
        batched = dict(zip(BATCH, run(model, recorder, [floats[n] for n in BATCH])))
        for name, rec in batched.items():
            print(tier, "batched", name, rec["margins"])
        result[tier] = {"min_size": min_size, "max_size": max_size, "single": single, "batched": batched}
    result["metadata"] = {
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "builder": "RetinaNet(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3, returned_layers="
        "[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)), num_classes=91)",
        "bn_eps": 0.0,
        "weights": "retinanet_weights.retinanet_state_dict(state_dict_shapes(model))",
        "images": {
            name: {"spec": list(spec), "sha256": photo_sha256(images[name])} for name, spec in PHOTO_SPECS.items()
        },
        "batch": BATCH,
    }
    torch.save(result, args.out)
    torch.load(args.out, weights_only=True)  # the test suite loads it this way
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
