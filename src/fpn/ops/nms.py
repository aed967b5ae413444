"""Non-maximum suppression without a Python loop over boxes.

Greedy NMS visits boxes by decreasing score and keeps a box unless a box kept before it overlaps it
with IoU above the threshold. Box ``i``'s fate depends only on boxes ranked before it, so the fixed
point of ``keep[i] = not any(keep[j] and iou[j, i] > t for j < i)`` (Cluster-NMS, Zheng et al. 2020),
iterated from "everything kept", is exactly the greedy answer: after ``n`` rounds the first ``n``
boxes are final. Rounds are needed only as deep as chains of suppression run, usually a handful.

To bound memory and the worst case (a long chain of boxes each suppressing the next), boxes are
processed in blocks of ``_BLOCK`` in ranked order: a block is first thinned by the boxes already kept
in earlier blocks, then the fixed point runs inside the block on a ``[B, B]`` matrix. Memory is
``O(B * _KEPT_CHUNK)``, never ``O(N^2)``.

For :func:`batched_nms` the ranking is by category first, then score: categories never interact, so
the greedy answer is the same, and each block only has to be compared with the kept boxes of its own
first category instead of all kept boxes (the cost is ``sum_c N_c * K_c`` rather than ``N * K``).

When only the ``max_keep`` best survivors are wanted (the RPN keeps 1000-2000 of up to 10000 candidates,
the detector 100 per image), the ranking is by score alone across categories (with a category mask), so
the work can stop, exactly, at the first block after which ``max_keep`` boxes are kept: every later box
ranks below them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fpn.ops.boxes import box_iou

__all__ = ["batched_nms", "nms"]

# Boxes per block: the in-block fixed point costs at most _BLOCK rounds of a _BLOCK x _BLOCK product.
_BLOCK = 256
# Earlier kept boxes compared with a block at once (bounds the [_BLOCK, _KEPT_CHUNK] IoU matrix).
_KEPT_CHUNK = 8192


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices (int64 ``[K]``) of the kept ``boxes [N, 4]``, by decreasing ``scores [N]``.

    A box is suppressed by a higher-scoring kept box when their IoU is strictly greater than
    ``iou_threshold``, as in torchvision (so two zero-area boxes, whose IoU is nan, never suppress each
    other). Equal scores are ranked by input order (stable sort).
    """
    _check_inputs(boxes, scores)
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_keep: int | None = None
) -> Tensor:
    """NMS within each category: boxes with different ``idxs [N]`` (int) never suppress each other.

    Returns the kept indices (int64) sorted by decreasing score across all categories, ties by input
    order; with ``max_keep``, only the first ``max_keep`` of them (the same as slicing the full answer,
    found with less work). Categories are kept apart by comparing ``idxs`` rather than by torchvision's
    coordinate offset, so IoUs are those of the original coordinates.
    """
    _check_inputs(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have the shape of scores {tuple(scores.shape)}, got {tuple(idxs.shape)}")
    if max_keep is not None and max_keep < 0:
        raise ValueError(f"max_keep must be at least 0, got {max_keep}")
    return _nms(boxes, scores, idxs, iou_threshold, max_keep)


def _check_inputs(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape [{boxes.shape[0]}], got {tuple(scores.shape)}")


def _nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float, max_keep: int | None = None
) -> Tensor:
    num = boxes.shape[0]
    if num == 0 or max_keep == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes, scores = boxes.detach(), scores.detach()
    order = torch.argsort(scores, descending=True, stable=True)
    # Category-major ranking (the stable sort keeps the score order within each category), unless the
    # work is to stop early: then score-major, and the kept boxes of every category are compared (masked).
    category_major = idxs is not None and max_keep is None
    if category_major:
        order = order[torch.argsort(idxs[order], stable=True)]
    ranked_idxs = idxs[order] if idxs is not None else None
    ranked = boxes[order]

    keep = torch.zeros(num, dtype=torch.bool, device=boxes.device)
    kept_count = 0
    for start in range(0, num, _BLOCK):
        stop = min(start + _BLOCK, num)
        block = ranked[start:stop]
        block_idxs = ranked_idxs[start:stop] if ranked_idxs is not None else None
        first = _first_rank_of_category(ranked_idxs, start) if category_major else 0
        alive = _not_suppressed_by_kept(ranked, ranked_idxs, keep, first, start, block, block_idxs, iou_threshold)
        # suppressors[i, j]: box j (ranked before i, same block) would suppress box i if kept.
        suppressors = _overlaps(block, block_idxs, block, block_idxs, iou_threshold).tril_(diagonal=-1)
        keep[start:stop] = _fixed_point(suppressors, alive)
        if max_keep is not None:
            kept_count += int(keep[start:stop].sum())
            if kept_count >= max_keep:
                break  # every later box ranks below the max_keep kept so far

    kept = order[keep]
    if not category_major:
        return kept[:max_keep]  # already by decreasing score, ties by input order
    kept = kept.sort().values
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def _first_rank_of_category(ranked_idxs: Tensor | None, start: int) -> int:
    """First ranked position whose (category-major) category is that of position ``start`` (0 for plain NMS)."""
    if ranked_idxs is None or start == 0:
        return 0
    return int(torch.searchsorted(ranked_idxs[:start], ranked_idxs[start : start + 1]).item())


def _overlaps(
    rows: Tensor, row_idxs: Tensor | None, cols: Tensor, col_idxs: Tensor | None, iou_threshold: float
) -> Tensor:
    """``[R, C]`` bool: the two boxes overlap above the threshold and share a category."""
    over = box_iou(rows, cols) > iou_threshold
    if row_idxs is not None and col_idxs is not None:
        over &= row_idxs[:, None] == col_idxs[None, :]
    return over


def _not_suppressed_by_kept(
    ranked: Tensor,
    ranked_idxs: Tensor | None,
    keep: Tensor,
    first: int,
    start: int,
    block: Tensor,
    block_idxs: Tensor | None,
    iou_threshold: float,
) -> Tensor:
    """``[B]`` bool: block boxes that no box kept at ranks ``[first, start)`` suppresses."""
    alive = torch.ones(block.shape[0], dtype=torch.bool, device=block.device)
    if start == first:
        return alive
    kept_before = first + torch.where(keep[first:start])[0]
    for chunk in kept_before.split(_KEPT_CHUNK):
        chunk_idxs = ranked_idxs[chunk] if ranked_idxs is not None else None
        # [B, chunk] so that the reduction runs along contiguous memory.
        alive &= ~_overlaps(block, block_idxs, ranked[chunk], chunk_idxs, iou_threshold).any(dim=1)
    return alive


def _fixed_point(suppressors: Tensor, alive: Tensor) -> Tensor:
    """Greedy keep mask of one block from its strictly lower-triangular ``suppressors [B, B]``.

    Iterates ``keep = alive & (no kept suppressor)`` from ``keep = alive``; each round fixes at least one
    more leading box, so it stops after at most ``B + 1`` rounds (usually 2 or 3). The "any kept
    suppressor" test is a matrix-vector product of 0/1 floats (exact: counts stay far below 2**24), much
    faster on CPU than a boolean reduction across rows.
    """
    weights = suppressors.to(torch.float32)
    keep = alive.clone()
    for _ in range(suppressors.shape[0] + 1):
        new_keep = alive & ((weights @ keep.to(torch.float32)) == 0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep
