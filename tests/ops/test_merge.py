"""Greedy non-maximum merging against a slow, obviously correct loop, and the cases it exists for."""

from __future__ import annotations

import pytest
import torch

from fpn.ops import merge
from fpn.ops.merge import box_ios, greedy_merge, greedy_merge_until_stable


def ios_reference(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def greedy_reference(boxes, scores, labels, threshold):
    """SAHI's GREEDYNMM, one box at a time: the best remaining box absorbs every remaining one it matches."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    remaining, keep, merged = list(order), [], []
    while remaining:
        best = remaining.pop(0)
        group = [j for j in remaining if labels[j] == labels[best] and ios_reference(boxes[best], boxes[j]) > threshold]
        remaining = [j for j in remaining if j not in group]
        members = [boxes[best]] + [boxes[j] for j in group]
        keep.append(best)
        merged.append([min(m[0] for m in members), min(m[1] for m in members),
                       max(m[2] for m in members), max(m[3] for m in members)])  # fmt: skip
    return keep, merged


def random_boxes(n: int, seed: int, extent: float = 200.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(n, generator=g).round(decimals=2)  # ties, to check the input-order rule
    labels = torch.randint(1, 4, (n,), generator=g)
    return boxes, scores, labels


def test_ios_matches_the_definition():
    boxes, _, _ = random_boxes(30, 0)
    boxes[3] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # no area: matches nothing
    got = box_ios(boxes, boxes)
    want = torch.tensor([[ios_reference(a, b) for b in boxes.tolist()] for a in boxes.tolist()])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_greedy_merge_equals_the_loop(seed, threshold, monkeypatch):
    monkeypatch.setattr(merge, "_ROWS", 7)  # several row chunks
    boxes, scores, labels = random_boxes(60, seed)
    keep, merged = greedy_merge(boxes, scores, labels, threshold)
    want_keep, want_merged = greedy_reference(boxes.tolist(), scores.tolist(), labels.tolist(), threshold)
    assert keep.tolist() == want_keep
    torch.testing.assert_close(merged, torch.tensor(want_merged).reshape(-1, 4))


def test_a_box_cut_by_a_border_becomes_one_box():
    # An object at x 90..130 cut by a tile ending at 110 and one starting at 100: left, right pieces, and the
    # whole box from a third tile; plus another class's box at the same place, which stays apart.
    boxes = torch.tensor([[90.0, 10, 110, 30], [100, 10, 130, 30], [90, 10, 130, 30], [90, 10, 130, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 1, 2])
    # One pass: the left piece absorbs the whole box, but the right piece overlaps the left by IoS 0.5 only.
    keep, merged = greedy_merge(boxes, scores, labels)
    assert keep.tolist() == [0, 1, 3]
    # Until stable: the left piece's union (the whole box) then absorbs the right piece.
    keep, merged = greedy_merge_until_stable(boxes, scores, labels)
    assert keep.tolist() == [0, 3]
    assert merged.tolist() == [[90.0, 10, 130, 30], [90.0, 10, 130, 30]]


@pytest.mark.parametrize("seed", range(4))
def test_until_stable_equals_the_loop_repeated(seed):
    boxes, scores, labels = random_boxes(80, seed, extent=120.0)
    keep, merged = greedy_merge_until_stable(boxes, scores, labels, 0.5)
    ids, current = list(range(len(scores))), boxes.tolist()
    while True:
        sub_keep, sub_merged = greedy_reference(current, [scores[i].item() for i in ids],
                                                [labels[i].item() for i in ids], 0.5)  # fmt: skip
        if len(sub_keep) == len(ids):
            break
        ids, current = [ids[k] for k in sub_keep], sub_merged
    order = sorted(range(len(ids)), key=lambda k: (-scores[ids[k]].item(), ids[k]))
    assert keep.tolist() == [ids[k] for k in order]
    torch.testing.assert_close(merged, torch.tensor([current[k] for k in order]).reshape(-1, 4))


def test_empty_and_bad_shapes():
    keep, merged = greedy_merge(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert keep.shape == (0,) and merged.shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        greedy_merge(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3))
