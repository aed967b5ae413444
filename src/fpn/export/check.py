"""Are two detection sets the same? The exported file's self-check against PyTorch, and the tests' measure.

Detections are compared as sets (the order of two boxes of nearly equal score is float rounding's choice):
equal counts, and a one-to-one match of each detection to one with the same label, its box within
``box_tol`` px (every coordinate) and its score within ``score_tol``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: The export's tolerances against PyTorch, float32 (docs/export.md): boxes in pixels of the model's
#: resolution (the resized image; :func:`box_tolerance` converts to the input's pixels).
BOX_TOL = 0.01
SCORE_TOL = 1e-4
#: fp16 networks: half precision's 11 bits of mantissa move boxes and scores (measured, docs/export.md).
FP16_BOX_TOL = 2.0
FP16_SCORE_TOL = 2e-2


def box_tolerance(transform, size: tuple[int, int], tol: float = BOX_TOL) -> float:
    """``tol`` px of the resized image in the pixels of an input of ``size`` (h, w): a 1000 px image that
    micro-fpn runs at 96 px has 10 of its pixels per pixel the networks see (never below ``tol``)."""
    resized = transform.resized_size(size, transform.min_size[-1])
    return tol * max(1.0, size[0] / max(resized[0], 1), size[1] / max(resized[1], 1))


@dataclass
class Difference:
    """How far two detection sets are apart; ``problem`` is None when they match within the tolerances."""

    count: int
    box: float = 0.0
    score: float = 0.0
    problem: str | None = None


def below_cap_ties(ours: dict[str, Tensor], theirs: dict[str, Tensor], cap: int, score_tol: float):
    """Both sets without the detections tied (within ``score_tol``) with the last one kept, when both are full
    (``cap`` detections): of exactly tied candidates at the cap, which one stays is each implementation's choice
    (ONNX's TopK keeps the lower index, torch's topk either; top-down-only's upsampled maps tie exactly)."""
    if len(ours["scores"]) != cap or len(theirs["scores"]) != cap or cap == 0:
        return ours, theirs
    floor = max(float(ours["scores"].min()), float(theirs["scores"].min())) + score_tol
    return ({k: v[d["scores"] > floor] for k, v in d.items()} for d in (ours, theirs))


def compare(
    ours: dict[str, Tensor], theirs: dict[str, Tensor], box_tol: float, score_tol: float, cap: int | None = None
) -> Difference:
    """Match ``ours`` to ``theirs`` (dicts of ``boxes [D, 4]``, ``scores [D]``, ``labels [D]``) as sets; with
    ``cap`` (detections per image), detections tied at a full cap are left out (:func:`below_cap_ties`)."""
    if cap is not None:
        ours, theirs = below_cap_ties(ours, theirs, cap, score_tol)
    n, m = len(ours["boxes"]), len(theirs["boxes"])
    if n != m:
        return Difference(m, problem=f"{n} detections against PyTorch's {m}")
    if n == 0:
        return Difference(0)
    distance = torch.cdist(ours["boxes"].double(), theirs["boxes"].double(), p=float("inf"))
    distance[ours["labels"][:, None] != theirs["labels"][None, :]] = float("inf")
    nearest = distance.min(dim=1)
    box = float(nearest.values.max())
    if nearest.indices.unique().numel() != n:
        return Difference(n, box, problem="no one-to-one match of the detections (labels or boxes differ)")
    score = float((ours["scores"].double() - theirs["scores"][nearest.indices].double()).abs().max())
    if box > box_tol:
        return Difference(n, box, score, f"a box is {box:.4g} px from PyTorch's (tolerance {box_tol})")
    if score > score_tol:
        return Difference(n, box, score, f"scores differ by {score:.3g} (tolerance {score_tol})")
    return Difference(n, box, score)
