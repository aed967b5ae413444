"""Write ``tests/golden/ops_goldens.pt``: torchvision's answers for the ops that ``fpn.ops`` reimplements.

Run with the reference interpreter (the one that has torchvision), from the repository root::

    /work/refvenv/v/bin/python tools/reference/make_ops_goldens.py

Inputs are drawn from a seeded CPU generator and saved next to the outputs, so the tests never need to
regenerate them. The file is a flat ``dict[str, Tensor]`` (loadable with ``weights_only=True``); keys are
``<case>/<name>``. Covered: ``nms`` and ``batched_nms`` (both of torchvision's code paths), ``box_iou``,
``roi_align`` for aligned False/True and sampling ratios 2, -1 and 0 on odd-sized maps with RoIs that
cross the border, are tiny or inverted, ``MultiScaleRoIAlign`` on four levels of strides 4..32, and
``BoxCoder`` encode/decode with weights (10, 10, 5, 5) and (1, 1, 1, 1).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, nms, roi_align

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "ops_goldens.pt"

NMS_THRESHOLDS = (0.3, 0.5, 0.7)
ROI_ALIGN_CONFIGS = [(aligned, ratio) for aligned in (False, True) for ratio in (2, -1, 0)]
POOLER_IMAGE = (256, 320)  # (height, width): maps of 64x80, 32x40, 16x20, 8x10 for strides 4..32
CODER_WEIGHTS = {"w10": (10.0, 10.0, 5.0, 5.0), "w1": (1.0, 1.0, 1.0, 1.0)}


def random_boxes(gen: torch.Generator, num: int, extent: float, min_size: float, max_size: float) -> torch.Tensor:
    """``[num, 4]`` xyxy boxes with corners in ``[0, extent)`` and sides in ``[min_size, max_size)``."""
    xy = torch.rand(num, 2, generator=gen) * extent
    wh = min_size + torch.rand(num, 2, generator=gen) * (max_size - min_size)
    return torch.cat([xy, xy + wh], dim=1)


def clustered_boxes(gen: torch.Generator, num: int, clusters: int) -> torch.Tensor:
    """Boxes jittered around a few centres, so that NMS has real work (many overlaps near the thresholds)."""
    centres = random_boxes(gen, clusters, 200.0, 20.0, 80.0)
    which = torch.randint(0, clusters, (num,), generator=gen)
    jitter = (torch.rand(num, 4, generator=gen) - 0.5) * 24.0
    return centres[which] + jitter


def nms_cases(gen: torch.Generator, out: dict[str, torch.Tensor]) -> None:
    boxes = clustered_boxes(gen, 300, 12)
    scores = torch.rand(300, generator=gen)
    out["nms/boxes"], out["nms/scores"] = boxes, scores
    for thr in NMS_THRESHOLDS:
        out[f"nms/keep_{thr}"] = nms(boxes, scores, thr)

    # Few distinct scores: torchvision's CPU sort happens to be stable, so ties keep their input order.
    tied = torch.randint(0, 5, (300,), generator=gen).float() / 4
    out["nms_ties/scores"] = tied
    out["nms_ties/keep"] = nms(boxes, tied, 0.5)

    # <= 1000 boxes: torchvision offsets coordinates per class; more: it loops over classes. Both are covered.
    for name, num in (("batched_small", 400), ("batched_large", 1500)):
        boxes = clustered_boxes(gen, num, 20)
        scores = torch.rand(num, generator=gen)
        idxs = torch.randint(0, 5, (num,), generator=gen)
        out[f"{name}/boxes"], out[f"{name}/scores"], out[f"{name}/idxs"] = boxes, scores, idxs
        out[f"{name}/keep"] = batched_nms(boxes, scores, idxs, 0.5)

    a = clustered_boxes(gen, 40, 6)
    b = clustered_boxes(gen, 30, 6)
    out["box_iou/a"], out["box_iou/b"], out["box_iou/iou"] = a, b, box_iou(a, b)


def roi_align_cases(gen: torch.Generator, out: dict[str, torch.Tensor]) -> None:
    features = torch.randn(2, 3, 13, 17, generator=gen)  # odd sizes, width != height
    scale = 0.5  # maps are 26 x 34 input pixels
    boxes = random_boxes(gen, 48, 34.0, 0.5, 30.0) - 4.0  # some start left of / above the map
    special = torch.tensor(
        [
            [0.0, 0.0, 34.0, 26.0],  # the whole map
            [30.0, 20.0, 40.0, 32.0],  # across the bottom-right border
            [-10.0, -10.0, -2.0, -3.0],  # entirely outside (partly beyond the -1 margin)
            [5.0, 5.0, 5.0, 9.0],  # zero width
            [7.0, 7.0, 7.2, 7.3],  # tiny
            [12.0, 10.0, 8.0, 4.0],  # inverted corners
            [33.0, 25.0, 34.0, 26.0],  # on the bottom-right edge
            [-1.5, -1.5, 60.0, 3.0],  # huge, thin
        ]
    )
    boxes = torch.cat([boxes, special])
    batch_index = torch.randint(0, 2, (boxes.shape[0], 1), generator=gen).float()
    rois = torch.cat([batch_index, boxes], dim=1)
    out["roi_align/features"], out["roi_align/rois"] = features, rois
    out["roi_align/spatial_scale"] = torch.tensor(scale)
    out["roi_align/output_size"] = torch.tensor([3, 4])
    for aligned, ratio in ROI_ALIGN_CONFIGS:
        pooled = roi_align(features, rois, (3, 4), spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
        out[f"roi_align/out_aligned{int(aligned)}_ratio{ratio}"] = pooled


def pooler_cases(gen: torch.Generator, out: dict[str, torch.Tensor]) -> None:
    height, width = POOLER_IMAGE
    features = {}
    for i, stride in enumerate((4, 8, 16, 32)):
        features[str(i)] = torch.randn(2, 3, height // stride, width // stride, generator=gen)
        out[f"pooler/features_{i}"] = features[str(i)]
    boxes = []
    for image in range(2):
        # Sides from 8 to 1200 px (log-uniform), so every level, and both clamps, get RoIs.
        num = 30
        sides = torch.exp(math.log(8.0) + torch.rand(num, 2, generator=gen) * math.log(1200.0 / 8.0))
        xy = torch.rand(num, 2, generator=gen) * torch.tensor([width - 20.0, height - 20.0])
        fixed = torch.tensor([[-40.0, -30.0, 960.0, 1000.0], [100.0, 60.0, 102.0, 61.0], [0.0, 0.0, 224.0, 224.0]])
        boxes.append(torch.cat([torch.cat([xy, xy + sides], dim=1), fixed]))
        out[f"pooler/boxes_{image}"] = boxes[image]
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=5, sampling_ratio=2)
    out["pooler/pooled"] = pooler(features, boxes, [POOLER_IMAGE, POOLER_IMAGE])
    levels = pooler.map_levels(boxes)  # 0-based position in the list of maps
    out["pooler/level_index"] = levels + 2  # as pyramid level k (p2..p5)


def coder_cases(gen: torch.Generator, out: dict[str, torch.Tensor]) -> None:
    proposals = random_boxes(gen, 64, 300.0, 2.0, 150.0)
    gt = proposals + (torch.rand(64, 4, generator=gen) - 0.5) * 40.0
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1.0)
    deltas = torch.randn(64, 4 * 3, generator=gen) * 2.0
    deltas[:4, 2::4] = 12.0  # beyond the clip, so the clamp before exp is exercised
    out["coder/proposals"], out["coder/gt"], out["coder/deltas"] = proposals, gt, deltas
    for name, weights in CODER_WEIGHTS.items():
        coder = BoxCoder(weights)
        out[f"coder/encode_{name}"] = coder.encode_single(gt, proposals)
        out[f"coder/decode_{name}"] = coder.decode(deltas, [proposals])


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20240601)
    out: dict[str, torch.Tensor] = {}
    nms_cases(gen, out)
    roi_align_cases(gen, out)
    pooler_cases(gen, out)
    coder_cases(gen, out)
    out["meta/torch_version"] = torch.tensor([int(v) for v in torch.__version__.split("+")[0].split(".")[:2]])
    out["meta/torchvision_version"] = torch.tensor(
        [int(v) for v in torchvision.__version__.split("+")[0].split(".")[:2]]
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in out.items()}, OUT)
    print(f"wrote {len(out)} tensors, {OUT.stat().st_size / 1024:.0f} KiB to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
