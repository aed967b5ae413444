"""Generate ``tests/golden/fasterrcnn_parity.pt`` and ``tests/golden/images/*.png`` with torchvision.

Run with the reference venv (see ``tools/reference/README.md``)::

    /tmp/refvenv/bin/python tools/reference/make_detector_goldens.py

The model is torchvision's ``fasterrcnn_resnet50_fpn`` at ``min_size=320, max_size=512`` with 91 classes, in eval
mode, loaded with ``deterministic_state_dict`` of its own state-dict shapes. Its backbone uses ``FrozenBatchNorm2d``
(eps 1e-5), the configuration torchvision builds whenever backbone weights are given, so the state-dict keys are
those of the COCO / ImageNet checkpoints (no ``num_batches_tracked``). The literal ``fasterrcnn_resnet50_fpn(
weights=None, weights_backbone=None)`` (plain ``BatchNorm2d``, same values) is run too and its largest difference is
recorded in the metadata.

The three test images are drawn deterministically (smooth background, rectangles, ellipses, blurred), saved as PNG,
and read back from the PNG files exactly as the test suite reads them (``load_image``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deterministic_weights import (
    SPECIAL_WEIGHT_STD,
    WEIGHT_GAIN,
    deterministic_state_dict,
    state_dict_shapes,
)
from make_backbone_goldens import summary

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "tests" / "golden"
IMAGE_DIR = GOLDEN_DIR / "images"

IMAGE_SPECS: dict[str, tuple[int, int, int]] = {
    "img0_237x311.png": (237, 311, 11),
    "img1_300x199.png": (300, 199, 22),
    "img2_181x256.png": (181, 256, 33),
}
"""PNG file name -> (height, width, drawing seed)."""

MODEL_KWARGS: dict[str, Any] = {"num_classes": 91, "min_size": 320, "max_size": 512}


# ----------------------------------------------------------------------------------------------------------- images
def draw_image(height: int, width: int, seed: int) -> Image.Image:
    """A structured, deterministic RGB image: colour gradient, filled rectangles and ellipses, lightly blurred."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=gen, dtype=torch.float64)

    ys = torch.linspace(0.0, 1.0, height, dtype=torch.float64)[:, None]
    xs = torch.linspace(0.0, 1.0, width, dtype=torch.float64)[None, :]
    corners = rand(4, 3) * 0.6 + 0.2
    img = (
        corners[0][:, None, None] * (1 - ys) * (1 - xs)
        + corners[1][:, None, None] * (1 - ys) * xs
        + corners[2][:, None, None] * ys * (1 - xs)
        + corners[3][:, None, None] * ys * xs
    )
    for i in range(14):
        cy, cx = float(rand(1)) * height, float(rand(1)) * width
        hh = (0.04 + 0.3 * float(rand(1))) * height
        hw = (0.04 + 0.3 * float(rand(1))) * width
        colour = rand(3)
        if i % 2 == 0:
            mask = ((ys - cy / height).abs() * height <= hh) & ((xs - cx / width).abs() * width <= hw)
        else:
            mask = ((ys * height - cy) / hh) ** 2 + ((xs * width - cx) / hw) ** 2 <= 1.0
        img = torch.where(mask, colour[:, None, None], img)
    img = F.avg_pool2d(img[None], kernel_size=3, stride=1, padding=1, count_include_pad=False)[0]
    img = img + 0.03 * (rand(3, height, width) - 0.5)  # a little texture
    pixels = (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.frombytes("RGB", (width, height), bytes(pixels.flatten().tolist()))


def load_image(path: Path) -> Tensor:
    """Read a PNG as the test suite does: RGB uint8 -> float32 [3, H, W], divided by 255."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        return data.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255.0


def write_images() -> list[Path]:
    """Draw and save the test images; returns their paths (in ``IMAGE_SPECS`` order)."""
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (height, width, seed) in IMAGE_SPECS.items():
        path = IMAGE_DIR / name
        draw_image(height, width, seed).save(path, format="PNG")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------------------ model
def build_model(frozen_bn: bool = True) -> FasterRCNN:
    """The reference detector in eval mode with deterministic weights.

    ``frozen_bn=True`` builds it the way ``fasterrcnn_resnet50_fpn`` does when backbone weights are given
    (``resnet50(norm_layer=FrozenBatchNorm2d)`` + ``_resnet_fpn_extractor`` + ``FasterRCNN``); ``False`` is the
    literal ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` with ``nn.BatchNorm2d``.
    """
    if frozen_bn:
        body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        model = FasterRCNN(_resnet_fpn_extractor(body, 3), **MODEL_KWARGS)
    else:
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **MODEL_KWARGS)
    model.load_state_dict(deterministic_state_dict(state_dict_shapes(model)))
    return model.eval()


@contextlib.contextmanager
def capture_batched_nms(calls: list[tuple[Tensor, Tensor, Tensor]]) -> Iterator[None]:
    """Temporarily wrap ``torchvision.ops.boxes.batched_nms`` to record ``(idxs, scores, keep)`` of every call."""
    original: Callable[..., Tensor] = box_ops.batched_nms

    def wrapped(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        keep = original(boxes, scores, idxs, iou_threshold)
        calls.append((idxs.clone(), scores.clone(), keep.clone()))
        return keep

    box_ops.batched_nms = wrapped
    try:
        yield
    finally:
        box_ops.batched_nms = original


@contextlib.contextmanager
def capture_method(obj: torch.nn.Module, name: str, calls: list[tuple[Any, Any]]) -> Iterator[None]:
    """Temporarily wrap ``obj.name`` (a bound method) to record ``(args, result)`` of every call."""
    original = getattr(obj, name)

    def wrapped(*args: Any) -> Any:
        result = original(*args)
        calls.append((args, result))
        return result

    setattr(obj, name, wrapped)
    try:
        yield
    finally:
        delattr(obj, name)


def cut_gap(sorted_desc: Tensor, k: int) -> float:
    """Gap between the k-th and (k+1)-th of descending values (inf when there are at most k)."""
    return float(sorted_desc[k - 1] - sorted_desc[k]) if sorted_desc.numel() > k else math.inf


def consecutive_gap(sorted_desc: Tensor) -> float:
    """Smallest gap between neighbours of descending values (inf for fewer than two)."""
    return float((sorted_desc[:-1] - sorted_desc[1:]).min()) if sorted_desc.numel() > 1 else math.inf


@torch.no_grad()
def run_staged(model: FasterRCNN, images: list[Tensor]) -> list[dict[str, Any]]:
    """Run the detector stage by stage (transform, backbone, rpn, roi_heads, postprocess) on one batch.

    Returns one record per image (see ``README.md`` for the fields); ``record["margins"]`` holds how far the
    run is from its discrete decisions (top-k cuts and the 0.05 score threshold).
    """
    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)

    filter_calls: list[tuple[Any, Any]] = []
    rpn_nms: list[tuple[Tensor, Tensor, Tensor]] = []
    with capture_method(model.rpn, "filter_proposals", filter_calls), capture_batched_nms(rpn_nms):
        proposals, _ = model.rpn(image_list, features)
    (_, objectness, _, anchors_per_level), (_, rpn_scores) = filter_calls[0]

    post_calls: list[tuple[Any, Any]] = []
    roi_nms: list[tuple[Tensor, Tensor, Tensor]] = []
    with capture_method(model.roi_heads, "postprocess_detections", post_calls), capture_batched_nms(roi_nms):
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    (class_logits, box_regression, _, _), _ = post_calls[0]
    resized = [{k: v.clone() for k, v in d.items()} for d in detections]
    final = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    pre_n, post_n = model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()
    roi = model.roi_heads
    counts = [int(p.shape[0]) for p in proposals]
    records = []
    for i, size in enumerate(original_sizes):
        lvl_idxs, lvl_scores, lvl_keep = rpn_nms[i]
        _, cls_scores, cls_keep = roi_nms[i]
        start, stop = sum(counts[:i]), sum(counts[: i + 1])
        fg_scores = torch.softmax(class_logits[start:stop], -1)[:, 1:]
        per_level = objectness.reshape(len(images), -1)[i].split(list(anchors_per_level))
        margins = {
            "rpn_pre_nms_cut_logit_gap": min(cut_gap(lv.sort(descending=True).values, pre_n) for lv in per_level),
            "rpn_post_nms_cut_score_gap": cut_gap(lvl_scores[lvl_keep], post_n),
            "rpn_num_after_nms": int(lvl_keep.numel()),
            "roi_min_abs_score_minus_thresh": float((fg_scores - roi.score_thresh).abs().min()),
            "roi_num_after_nms": int(cls_keep.numel()),
            "roi_detections_cut_score_gap": cut_gap(cls_scores[cls_keep], roi.detections_per_img),
            "detections_min_consecutive_score_gap": consecutive_gap(cls_scores[cls_keep][: roi.detections_per_img]),
            "proposals_min_consecutive_score_gap": consecutive_gap(lvl_scores[lvl_keep][:post_n]),
        }
        records.append(
            {
                "original_size": list(size),
                "image_size": list(image_list.image_sizes[i]),
                "batch_tensor_shape": list(image_list.tensors.shape),
                "features": {name: summary(f[i]) for name, f in features.items()},
                "proposals": proposals[i].clone(),
                "proposal_scores": rpn_scores[i].clone(),
                "proposal_levels": lvl_idxs[lvl_keep[:post_n]].clone(),
                "class_logits": summary(class_logits[start:stop]),
                "class_logits_head": class_logits[start : start + 8].clone(),
                "box_regression": summary(box_regression[start:stop]),
                "box_regression_head": box_regression[start : start + 8].clone(),
                "boxes_resized": resized[i]["boxes"],
                "boxes": final[i]["boxes"].clone(),
                "scores": final[i]["scores"].clone(),
                "labels": final[i]["labels"].clone(),
                "margins": margins,
            }
        )
    return records


def check_against_forward(model: FasterRCNN, images: list[Tensor], records: list[dict[str, Any]]) -> None:
    """Assert that the staged run reproduces ``model(images)`` exactly."""
    with torch.no_grad():
        outputs = model(images)
    for out, rec in zip(outputs, records):
        for key in ("boxes", "scores", "labels"):
            if not torch.equal(out[key], rec[key]):
                raise AssertionError(f"staged run differs from model(images) on {key}")


def max_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """How far two runs are apart: whether labels agree, and the largest proposal / box / score differences."""

    def largest(key: str) -> float:
        return max(float((ra[key] - rb[key]).abs().max()) if ra[key].numel() else 0.0 for ra, rb in zip(a, b))

    same = all(
        ra["labels"].shape == rb["labels"].shape and torch.equal(ra["labels"], rb["labels"]) for ra, rb in zip(a, b)
    )
    result: dict[str, Any] = {"same_labels": same, "proposals": largest("proposals")}
    if same:
        result.update(boxes=largest("boxes"), scores=largest("scores"))
    return result


def level_of_boxes(boxes: Tensor) -> Tensor:
    """torchvision's ``LevelMapper`` level (2..5) of boxes: ``floor(4 + log2(sqrt(area) / 224))``."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(4 + torch.log2(torch.sqrt(area) / 224) + 1e-6)
    return level.clamp(2, 5).to(torch.int64)


def describe(records: list[dict[str, Any]], title: str) -> str:
    """Human-readable statistics of a run (printed and stored in the metadata)."""
    lines = [title]
    for i, r in enumerate(records):
        scores, labels, ps = r["scores"], r["labels"], r["proposal_scores"]
        sizes = (r["proposals"][:, 2:] - r["proposals"][:, :2]).prod(dim=1).sqrt()
        label_counts = torch.bincount(labels, minlength=91)
        lines.append(
            f"  image {i}: original {r['original_size']} -> resized {r['image_size']}, batch {r['batch_tensor_shape']}"
        )
        lines.append(
            f"    {r['proposals'].shape[0]} proposals, objectness [{float(ps.min()):.4f}, {float(ps.max()):.4f}], "
            f"sqrt(area) [{float(sizes.min()):.1f}, {float(sizes.median()):.1f}, {float(sizes.max()):.1f}], "
            f"anchor level P2..P6 {torch.bincount(r['proposal_levels'], minlength=5).tolist()}, "
            f"RoIAlign level P2..P5 {(torch.bincount(level_of_boxes(r['proposals']) - 2, minlength=4)).tolist()}"
        )
        if scores.numel():
            lines.append(
                f"    {scores.numel()} detections, scores [{float(scores.min()):.4f}, {float(scores.max()):.4f}], "
                f"{int((label_counts > 0).sum())} distinct labels (largest counts "
                f"{label_counts.sort(descending=True).values[:5].tolist()})"
            )
        else:
            lines.append("    0 detections")
        lines.append("    margins " + ", ".join(f"{k}={v:.3g}" for k, v in r["margins"].items()))
    return "\n".join(lines)


def main() -> None:
    """Write the images and the parity golden file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR / "fasterrcnn_parity.pt")
    args = parser.parse_args()

    torch.manual_seed(0)
    paths = write_images()
    images = [load_image(p) for p in paths]

    model = build_model(frozen_bn=True)
    single = [run_staged(model, [im])[0] for im in images]
    batched = run_staged(model, images)
    for im, rec in zip(images, single):
        check_against_forward(model, [im], [rec])
    check_against_forward(model, images, batched)

    bn_model = build_model(frozen_bn=False)
    bn_single = [run_staged(bn_model, [im])[0] for im in images]

    stats = describe(single, "single-image runs") + "\n" + describe(batched, "batched run (all three images)")
    print(stats)
    diff = max_difference(single, bn_single)
    print("FrozenBatchNorm2d vs BatchNorm2d (single runs):", diff)

    rpn, roi, transform = model.rpn, model.roi_heads, model.transform
    metadata: dict[str, Any] = {
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "builder": "FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), **model_kwargs)",
        "model_kwargs": dict(MODEL_KWARGS),
        "norm_layer": "FrozenBatchNorm2d",
        "bn_eps": 1e-5,
        "weights": "deterministic_state_dict(state_dict_shapes(model))",
        "weight_gain": WEIGHT_GAIN,
        "special_weight_std": dict(SPECIAL_WEIGHT_STD),
        "image_files": [p.name for p in paths],
        "image_loading": "PIL RGB uint8 -> float32 [3,H,W] / 255.0",
        "transform": {
            "min_size": list(transform.min_size),
            "max_size": transform.max_size,
            "image_mean": list(transform.image_mean),
            "image_std": list(transform.image_std),
            "size_divisible": transform.size_divisible,
            "resize": "F.interpolate(img[None], scale_factor=min(min_size / min(h, w), max_size / max(h, w)), "
            "mode='bilinear', recompute_scale_factor=True, align_corners=False); padded bottom/right with 0 "
            "to a multiple of size_divisible after normalisation",
        },
        "rpn": {
            "anchor_sizes": [list(s) for s in rpn.anchor_generator.sizes],
            "aspect_ratios": [list(a) for a in rpn.anchor_generator.aspect_ratios],
            "pre_nms_top_n": dict(rpn._pre_nms_top_n),
            "post_nms_top_n": dict(rpn._post_nms_top_n),
            "nms_thresh": rpn.nms_thresh,
            "score_thresh": rpn.score_thresh,
            "min_size": rpn.min_size,
            "box_coder_weights": list(rpn.box_coder.weights),
        },
        "roi_heads": {
            "score_thresh": roi.score_thresh,
            "nms_thresh": roi.nms_thresh,
            "detections_per_img": roi.detections_per_img,
            "box_coder_weights": list(roi.box_coder.weights),
            "bbox_xform_clip": roi.box_coder.bbox_xform_clip,
            "roi_output_size": list(roi.box_roi_pool.output_size),
            "roi_sampling_ratio": roi.box_roi_pool.sampling_ratio,
            "roi_featmap_names": list(roi.box_roi_pool.featmap_names),
            "roi_align_aligned": False,
            "level_mapper": "k = floor(4 + log2(sqrt(area) / 224) + 1e-6).clamp(2, 5) on the proposals",
        },
        "frozen_vs_batchnorm2d_max_diff": diff,
        "stats": stats,
    }
    torch.save({"metadata": metadata, "single": single, "batched": batched}, args.out)
    torch.load(args.out, weights_only=True)  # the test suite loads it this way
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {len(paths)} images in {IMAGE_DIR}")


if __name__ == "__main__":
    main()
