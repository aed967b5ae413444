"""Box geometry and the box coder, against per-box Python references and torchvision's golden outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fpn.ops.boxes import BoxCoder, box_area, box_iou, clip_boxes_to_image, remove_small_boxes

GOLDENS = Path(__file__).resolve().parents[1] / "golden" / "ops_goldens.pt"


@pytest.fixture(scope="module")
def goldens() -> dict[str, torch.Tensor]:
    return torch.load(GOLDENS, weights_only=True)


def random_boxes(gen: torch.Generator, num: int, extent: float = 100.0, max_size: float = 50.0) -> torch.Tensor:
    xy = torch.rand(num, 2, generator=gen) * extent
    wh = 1.0 + torch.rand(num, 2, generator=gen) * max_size
    return torch.cat([xy, xy + wh], dim=1)


def iou_reference(a: list[float], b: list[float]) -> float:
    """IoU of two boxes, one scalar at a time (nan for two empty boxes, like torchvision)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union != 0 else math.nan


# --- area, IoU, clipping, filtering ----------------------------------------------------------------------------


def test_box_area_matches_width_times_height() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 3.0, 2.0, 9.0], [1.0, 1.0, 4.0, 2.5]])
    assert box_area(boxes).tolist() == [50.0, 0.0, 4.5]
    assert box_area(boxes.reshape(1, 3, 4)).shape == (1, 3)


def test_box_area_upcasts_half_precision() -> None:
    boxes = torch.tensor([[0.0, 0.0, 300.0, 300.0]], dtype=torch.float16)
    # 90000 overflows float16 (max 65504); the area is computed in float32 instead.
    assert box_area(boxes).dtype == torch.float32
    assert box_area(boxes).item() == 90000.0


def test_box_iou_matches_pairwise_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = random_boxes(gen, 17).double(), random_boxes(gen, 11).double()
    got = box_iou(a, b)
    assert got.shape == (17, 11)
    want = torch.tensor([[iou_reference(x, y) for y in b.tolist()] for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_box_iou_edge_cases() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],  # identical
            [10.0, 0.0, 20.0, 10.0],  # touching edge: no overlap
            [5.0, 5.0, 5.0, 5.0],  # a point
        ]
    )
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == 1.0
    assert iou[0, 2] == 0.0
    assert iou[0, 3] == 0.0
    assert torch.isnan(iou[3, 3])  # 0 / 0, as torchvision
    assert box_iou(boxes[:0], boxes).shape == (0, 4)
    assert box_iou(boxes, boxes[:0]).shape == (4, 0)


def test_box_iou_is_differentiable() -> None:
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 1.0, 5.0, 6.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: box_iou(x, b), (a,))


def test_clip_boxes_to_image() -> None:
    boxes = torch.tensor([[-5.0, -3.0, 50.0, 40.0], [10.0, 12.0, 20.0, 22.0], [70.0, 1.0, 90.0, 2.0]])
    clipped = clip_boxes_to_image(boxes, (30, 60))  # (height, width)
    assert clipped.tolist() == [[0.0, 0.0, 50.0, 30.0], [10.0, 12.0, 20.0, 22.0], [60.0, 1.0, 60.0, 2.0]]
    batched = clip_boxes_to_image(boxes[None].repeat(2, 1, 1), (30, 60))
    assert batched.shape == (2, 3, 4) and torch.equal(batched[1], clipped)
    assert clip_boxes_to_image(boxes[:0], (30, 60)).shape == (0, 4)


def test_remove_small_boxes() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 3.0, 1.9], [4.0, 4.0, 3.0, 9.0]])
    keep = remove_small_boxes(boxes, 2.0)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [1]  # >= min_size on both sides; inverted boxes have negative sides
    assert remove_small_boxes(boxes[:0], 1.0).tolist() == []


# --- box coder ----------------------------------------------------------------------------------------------------


def encode_reference(gt: list[float], prop: list[float], weights: tuple[float, ...]) -> list[float]:
    pw, ph = prop[2] - prop[0], prop[3] - prop[1]
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    px, py = prop[0] + 0.5 * pw, prop[1] + 0.5 * ph
    gx, gy = gt[0] + 0.5 * gw, gt[1] + 0.5 * gh
    wx, wy, ww, wh = weights
    return [wx * (gx - px) / pw, wy * (gy - py) / ph, ww * math.log(gw / pw), wh * math.log(gh / ph)]


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_reference_and_round_trips(weights: tuple[float, float, float, float]) -> None:
    gen = torch.Generator().manual_seed(1)
    props = random_boxes(gen, 20).double()
    gt = random_boxes(gen, 20).double()
    coder = BoxCoder(weights)
    deltas = coder.encode(gt, props)
    want = [encode_reference(g, p, weights) for g, p in zip(gt.tolist(), props.tolist())]
    torch.testing.assert_close(deltas, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    decoded = coder.decode(deltas, props)
    assert decoded.shape == (20, 1, 4)
    torch.testing.assert_close(decoded[:, 0], gt, rtol=0, atol=1e-9)


def test_encode_accepts_any_batch_shape_and_lists() -> None:
    gen = torch.Generator().manual_seed(2)
    gt, props = random_boxes(gen, 12).reshape(3, 4, 4), random_boxes(gen, 12).reshape(3, 4, 4)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    batched = coder.encode(gt, props)
    assert batched.shape == (3, 4, 4)
    torch.testing.assert_close(batched.reshape(12, 4), coder.encode(gt.reshape(12, 4), props.reshape(12, 4)))
    per_image = coder.encode_batch([gt[0], gt[1][:2], gt[2][:0]], [props[0], props[1][:2], props[2][:0]])
    assert [t.shape[0] for t in per_image] == [4, 2, 0]
    torch.testing.assert_close(per_image[1], batched[1][:2])
    with pytest.raises(ValueError):
        coder.encode_batch([gt[0]], [props[0][:3]])


def test_decode_several_boxes_per_reference_and_lists() -> None:
    gen = torch.Generator().manual_seed(3)
    props = random_boxes(gen, 5)
    deltas = torch.randn(5, 4 * 3, generator=gen) * 0.3
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    out = coder.decode(deltas, props)
    assert out.shape == (5, 3, 4)
    for k in range(3):
        torch.testing.assert_close(out[:, k], coder.decode(deltas[:, 4 * k : 4 * k + 4], props)[:, 0])
    torch.testing.assert_close(coder.decode(deltas, [props[:2], props[2:]]), out)


def test_decode_clamps_dw_dh_before_exp() -> None:
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), box)
    # exp(50) would overflow; clamped at log(1000 / 16) the 16 px box grows to exactly 1000 px.
    torch.testing.assert_close(out[0, 0], torch.tensor([-492.0, -492.0, 508.0, 508.0]))
    # The clamp is only an upper bound: very negative dw shrinks the box towards its centre.
    tiny = coder.decode(torch.tensor([[0.0, 0.0, -50.0, -50.0]]), box)[0, 0]
    torch.testing.assert_close(tiny, torch.tensor([8.0, 8.0, 8.0, 8.0]))


def test_degenerate_boxes_encode_to_non_finite_values() -> None:
    # As torchvision: a zero-width proposal divides by zero. Callers must filter degenerate boxes first.
    deltas = BoxCoder().encode(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[1.0, 1.0, 1.0, 3.0]]))
    assert not torch.isfinite(deltas).all()


def test_coder_empty_inputs() -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 2, 4)
    assert coder.decode(torch.zeros(0, 4), []).shape == (0, 1, 4)
    assert coder.encode_batch([], []) == []


def test_decode_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        BoxCoder().decode(torch.zeros(3, 6), torch.zeros(3, 4))


# --- torchvision goldens ------------------------------------------------------------------------------------------


def test_box_iou_golden(goldens: dict[str, torch.Tensor]) -> None:
    torch.testing.assert_close(box_iou(goldens["box_iou/a"], goldens["box_iou/b"]), goldens["box_iou/iou"])


@pytest.mark.parametrize("name,weights", [("w10", (10.0, 10.0, 5.0, 5.0)), ("w1", (1.0, 1.0, 1.0, 1.0))])
def test_box_coder_golden(goldens: dict[str, torch.Tensor], name: str, weights: tuple[float, ...]) -> None:
    coder = BoxCoder(weights)
    gt, props, deltas = goldens["coder/gt"], goldens["coder/proposals"], goldens["coder/deltas"]
    torch.testing.assert_close(coder.encode(gt, props), goldens[f"coder/encode_{name}"], rtol=0, atol=1e-5)
    decoded = coder.decode(deltas, props)
    want = goldens[f"coder/decode_{name}"]
    assert decoded.shape == want.shape == (64, 3, 4)
    # Decoded boxes are in pixels (up to ~10^4 after the clamp), so the tolerance is relative there.
    torch.testing.assert_close(decoded, want, rtol=1e-6, atol=1e-5)
