"""NMS against a brute-force greedy loop and against torchvision's golden outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fpn.ops.boxes import box_iou
from fpn.ops.nms import batched_nms, nms

GOLDENS = Path(__file__).resolve().parents[1] / "golden" / "ops_goldens.pt"
NMS_MODULE = sys.modules["fpn.ops.nms"]  # `fpn.ops.nms` the attribute is the function, not the module


@pytest.fixture(scope="module")
def goldens() -> dict[str, torch.Tensor]:
    return torch.load(GOLDENS, weights_only=True)


def greedy_nms_reference(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """The textbook loop: take the best remaining box, drop everything overlapping it by more than threshold."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    iou = box_iou(boxes, boxes)
    suppressed = [False] * len(order)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[rank + 1 :]:
            if iou[i, j] > threshold:
                suppressed[j] = True
    return keep


def batched_reference(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> list[int]:
    keep = []
    for category in idxs.unique().tolist():
        members = torch.where(idxs == category)[0]
        keep += [int(members[i]) for i in greedy_nms_reference(boxes[members], scores[members], threshold)]
    return sorted(keep, key=lambda i: (-float(scores[i]), i))


def clustered_boxes(gen: torch.Generator, num: int, clusters: int, jitter: float = 20.0) -> torch.Tensor:
    xy = torch.rand(clusters, 2, generator=gen) * 200.0
    centres = torch.cat([xy, xy + 20.0 + torch.rand(clusters, 2, generator=gen) * 60.0], dim=1)
    which = torch.randint(0, clusters, (num,), generator=gen)
    return centres[which] + (torch.rand(num, 4, generator=gen) - 0.5) * jitter


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_matches_greedy_reference(threshold: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(gen, 150, 8)
    scores = torch.rand(150, generator=gen)
    got = nms(boxes, scores, threshold)
    assert got.dtype == torch.int64
    assert got.tolist() == greedy_nms_reference(boxes, scores, threshold)
    assert torch.all(scores[got][:-1] >= scores[got][1:])


def test_nms_ties_keep_input_order() -> None:
    gen = torch.Generator().manual_seed(2)
    boxes = clustered_boxes(gen, 120, 6)
    scores = torch.randint(0, 3, (120,), generator=gen).float()
    assert nms(boxes, scores, 0.5).tolist() == greedy_nms_reference(boxes, scores, 0.5)
    # Identical boxes and scores: the first one wins.
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    assert nms(same, torch.ones(3), 0.5).tolist() == [0]


def test_nms_threshold_is_strict() -> None:
    # IoU of these two is exactly 0.5 (overlap 50 of union 100): suppressed only for thresholds below 0.5.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 7.5], [0.0, 2.5, 10.0, 10.0]])
    assert box_iou(boxes, boxes)[0, 1] == 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_nms_degenerate_boxes() -> None:
    boxes = torch.tensor(
        [
            [5.0, 5.0, 5.0, 5.0],  # zero area
            [5.0, 5.0, 5.0, 5.0],  # the same point: IoU is 0 / 0 = nan, which suppresses nothing
            [0.0, 0.0, 0.0, 10.0],  # zero width
            [0.0, 0.0, 10.0, 10.0],
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]
    assert nms(boxes, scores, 0.5).tolist() == greedy_nms_reference(boxes, scores, 0.5)


def test_nms_empty_and_single() -> None:
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_nms_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5)


def test_nms_long_chain_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each box overlaps its neighbours above 0.5 only: greedy keeps every other box. This is the worst case of
    # the fixed-point iteration, and with small blocks it also crosses many block boundaries.
    monkeypatch.setattr(NMS_MODULE, "_BLOCK", 16)
    num = 101
    x = torch.arange(num, dtype=torch.float32) * 3.0
    boxes = torch.stack([x, torch.zeros(num), x + 10.0, torch.full((num,), 10.0)], dim=1)
    scores = torch.linspace(1.0, 0.0, num)
    assert nms(boxes, scores, 0.5).tolist() == list(range(0, num, 2))
    # Reversed scores walk the chain the other way.
    assert nms(boxes, scores.flip(0), 0.5).tolist() == greedy_nms_reference(boxes, scores.flip(0), 0.5)


@pytest.mark.parametrize("block,chunk", [(256, 8192), (7, 5)])
def test_blocking_does_not_change_results(monkeypatch: pytest.MonkeyPatch, block: int, chunk: int) -> None:
    monkeypatch.setattr(NMS_MODULE, "_BLOCK", block)
    monkeypatch.setattr(NMS_MODULE, "_KEPT_CHUNK", chunk)
    gen = torch.Generator().manual_seed(3)
    boxes = clustered_boxes(gen, 200, 10)
    scores = torch.rand(200, generator=gen)
    idxs = torch.randint(0, 4, (200,), generator=gen)
    assert nms(boxes, scores, 0.6).tolist() == greedy_nms_reference(boxes, scores, 0.6)
    assert batched_nms(boxes, scores, idxs, 0.6).tolist() == batched_reference(boxes, scores, idxs, 0.6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_matches_per_category_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(gen, 160, 6)
    scores = torch.rand(160, generator=gen)
    idxs = torch.randint(0, 5, (160,), generator=gen) * 7 - 3  # arbitrary, unsorted, negative categories
    got = batched_nms(boxes, scores, idxs, 0.5)
    assert got.tolist() == batched_reference(boxes, scores, idxs, 0.5)


def test_batched_nms_never_suppresses_across_categories() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    idxs = torch.tensor([0, 1, 0, 2])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 2, 3]


def test_nms_half_precision_boxes() -> None:
    gen = torch.Generator().manual_seed(4)
    boxes = clustered_boxes(gen, 80, 5)
    scores = torch.rand(80, generator=gen)
    # IoU is computed in float32 from the (rounded) half-precision coordinates.
    half = boxes.half()
    assert nms(half, scores.half(), 0.5).tolist() == greedy_nms_reference(half.float(), scores.half().float(), 0.5)


# --- torchvision goldens ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_golden(goldens: dict[str, torch.Tensor], threshold: float) -> None:
    got = nms(goldens["nms/boxes"], goldens["nms/scores"], threshold)
    assert torch.equal(got, goldens[f"nms/keep_{threshold}"])


def test_nms_golden_with_ties(goldens: dict[str, torch.Tensor]) -> None:
    assert torch.equal(nms(goldens["nms/boxes"], goldens["nms_ties/scores"], 0.5), goldens["nms_ties/keep"])


@pytest.mark.parametrize("case", ["batched_small", "batched_large"])
def test_batched_nms_golden(goldens: dict[str, torch.Tensor], case: str) -> None:
    got = batched_nms(goldens[f"{case}/boxes"], goldens[f"{case}/scores"], goldens[f"{case}/idxs"], 0.5)
    assert torch.equal(got, goldens[f"{case}/keep"])


@pytest.mark.parametrize("block,chunk", [(256, 8192), (7, 5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_nms_max_keep_is_the_full_answer_cut(
    monkeypatch: pytest.MonkeyPatch, block: int, chunk: int, seed: int
) -> None:
    # Stopping early (score-major blocks with a category mask) must give exactly the first max_keep of the
    # full category-major answer, ties included (scores rounded to create many).
    monkeypatch.setattr(NMS_MODULE, "_BLOCK", block)
    monkeypatch.setattr(NMS_MODULE, "_KEPT_CHUNK", chunk)
    gen = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(gen, 300, 12)
    scores = (torch.rand(300, generator=gen) * 20).round() / 20
    idxs = torch.randint(0, 5, (300,), generator=gen) * 3 - 4
    full = batched_nms(boxes, scores, idxs, 0.5)
    assert full.tolist() == batched_reference(boxes, scores, idxs, 0.5)
    for max_keep in (0, 1, 5, 17, len(full) - 1, len(full), len(full) + 10, 1000):
        assert batched_nms(boxes, scores, idxs, 0.5, max_keep=max_keep).tolist() == full[:max_keep].tolist()
    with pytest.raises(ValueError, match="max_keep"):
        batched_nms(boxes, scores, idxs, 0.5, max_keep=-1)


def test_batched_nms_max_keep_golden(goldens: dict[str, torch.Tensor]) -> None:
    case = "batched_large"
    keep = goldens[f"{case}/keep"]
    got = batched_nms(goldens[f"{case}/boxes"], goldens[f"{case}/scores"], goldens[f"{case}/idxs"], 0.5, max_keep=50)
    assert torch.equal(got, keep[:50])
