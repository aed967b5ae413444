"""Merging detections gathered from overlapping tiles: greedy non-maximum merging, and the overlap it uses.

A box cut by a tile border comes back as two fragments, one from each tile, plus perhaps the whole box from
a tile that holds it entirely. Their IoU is low (a half box against the whole box: 0.5; two complementary
halves: 0), so NMS keeps several of them; but the smaller one lies inside the larger, so their
*intersection over the smaller area* (IoS) is high. Greedy non-maximum merging (GREEDYNMM, as SAHI calls it)
visits boxes by decreasing score; a box not yet absorbed becomes a keeper, and absorbs every later box of its
class whose IoS with it exceeds the threshold; the keeper's box grows to the union of its group, its score,
label and other fields stay the keeper's (the most confident fragment's).

One pass compares each box with the keeper's own box, not with the growing union (as SAHI's
``greedy_nmm`` finds its groups), so two halves overlapping by less than the threshold stay apart even when a
third, whole box joined one of them. :func:`greedy_merge_until_stable` repeats the pass on the unions until
nothing more merges, which fuses them too; tiled detection uses it.

Like :mod:`fpn.ops.nms`, the greedy answer is computed without a Python loop over boxes. Box ``i`` is a keeper
exactly when no keeper ranked before it matches it, the fixed point of ``keep[i] = not any(keep[j] and
match[j, i] for j < i)`` iterated from "everything kept" (after ``n`` rounds the first ``n`` boxes are final;
rounds are needed only as deep as chains of matches run). Matches are few (a box meets its neighbours in the
adjacent tiles, not the whole image), so they are found as a sparse list of pairs, ``[R, N]`` rows at a time,
and the fixed point runs on that list: memory is ``O(_ROWS * N + pairs)``, never ``O(N^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fpn.ops.boxes import box_area

__all__ = ["box_ios", "greedy_merge", "greedy_merge_until_stable", "matching_pairs"]

# Rows of the [R, N] overlap matrix computed at once when looking for matching pairs.
_ROWS = 512


def box_ios(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the smaller area, ``[N, M]`` for ``boxes1 [N, 4]`` and ``boxes2 [M, 4]`` (x1, y1, x2, y2).

    0 where either box has no area (it cannot be said to lie inside another), so such boxes never match.
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    smaller = torch.minimum(area1[:, None], area2[None, :])
    return torch.where(smaller > 0, inter / smaller.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def matching_pairs(ranked: Tensor, labels: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``i < j``, of ``ranked [N, 4]`` boxes of one label whose IoS exceeds ``threshold``.

    Two int64 ``[P]`` tensors (rows, then columns), in row-major order.
    """
    rows, cols = [], []
    for start in range(0, ranked.shape[0], _ROWS):
        stop = min(start + _ROWS, ranked.shape[0])
        later = slice(start + 1, None)  # only j > i matter; rows of this chunk are compared with every later box
        match = box_ios(ranked[start:stop], ranked[later]) > threshold
        match &= labels[start:stop, None] == labels[None, later]
        i, j = torch.nonzero(match, as_tuple=True)
        i, j = i + start, j + start + 1
        upper = j > i
        rows.append(i[upper])
        cols.append(j[upper])
    empty = torch.empty(0, dtype=torch.int64, device=ranked.device)
    return (torch.cat(rows), torch.cat(cols)) if rows else (empty, empty)


def greedy_merge(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Greedy non-maximum merging within each label (see the module's notes).

    ``boxes [N, 4]`` (x1, y1, x2, y2), ``scores [N]``, ``labels [N]`` (int). Returns ``keep`` (int64 ``[K]``,
    the keepers' indices by decreasing score, ties by input order) and ``merged [K, 4]``, each keeper's box
    grown to the union of the boxes it absorbed (itself included). A box is absorbed by the first keeper,
    in score order, whose IoS with it is strictly above ``threshold`` (the keeper's own box, not the growing
    union: the order of absorption cannot change the groups).
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],) or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must have shape [{boxes.shape[0]}], got {tuple(scores.shape)}, "
                         f"{tuple(labels.shape)}")  # fmt: skip
    num = boxes.shape[0]
    if num == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), boxes.new_empty((0, 4))
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = boxes[order]
    rows, cols = matching_pairs(ranked, labels[order], threshold)
    keep = torch.ones(num, dtype=torch.bool, device=boxes.device)
    for _ in range(num + 1):
        absorbed = torch.zeros(num, dtype=torch.bool, device=boxes.device)
        absorbed[cols[keep[rows]]] = True
        new_keep = ~absorbed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    # Each absorbed box goes to the first keeper matching it (the smallest keeper rank among its pairs).
    owner = torch.arange(num, device=boxes.device)
    live = keep[rows]
    owner.scatter_reduce_(0, cols[live], rows[live], reduce="amin", include_self=False)
    union = ranked.clone()
    union[:, :2] = ranked[:, :2].clone().scatter_reduce_(0, owner[:, None].expand(-1, 2), ranked[:, :2], "amin")
    union[:, 2:] = ranked[:, 2:].clone().scatter_reduce_(0, owner[:, None].expand(-1, 2), ranked[:, 2:], "amax")
    return order[keep], union[keep]


def greedy_merge_until_stable(
    boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """:func:`greedy_merge` repeated on its own unions until a pass merges nothing; same inputs and outputs.

    Each pass either removes a box or stops, so there are at most ``N`` passes (usually two).
    """
    keep, merged = greedy_merge(boxes, scores, labels, threshold)
    while True:
        again, merged_again = greedy_merge(merged, scores[keep], labels[keep], threshold)
        if len(again) == len(keep):
            return keep, merged
        keep, merged = keep[again], merged_again
