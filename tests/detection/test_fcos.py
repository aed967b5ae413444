"""FCOS's pieces: the size ranges from the level contract, the target assignment against a per-location loop, the box
coding, and the detector's outputs (levels, counts, hooks) on the tiny preset."""

from __future__ import annotations

import math

import pytest
import torch

from fpn.config import to_dict
from fpn.detection import FCOS, build_detector
from fpn.detection.anchors import AnchorGenerator
from fpn.detection.fcos_targets import assign, centerness, decode, encode, location_bounds, size_ranges
from fpn.levels import level
from fpn.presets import preset

P3_P7 = [level(f"p{k}", 256) for k in range(3, 8)]


def test_size_ranges_of_p3_p7_are_torchvisions():
    # torchvision's FCOS: anchor sizes 8..128 (the strides), bounds 4x and 8x, first open below, last above.
    assert size_ranges(P3_P7) == [(0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf)]
    assert size_ranges(P3_P7[:3], scale=0.5) == [(0, 32), (32, 64), (64, math.inf)]
    assert size_ranges([level("p4", 8)]) == [(0, math.inf)]  # one level answers for every size


def grid(levels, image=(256, 320)):
    generator = AnchorGenerator(levels, [lv.stride for lv in levels], [1.0])
    sizes = {lv.name: (-(-image[0] // lv.stride), -(-image[1] // lv.stride)) for lv in levels}
    return generator(image, sizes)


def test_location_bounds_follow_each_level():
    levels = P3_P7[:4]
    anchors, per_level = grid(levels)
    lower, upper = location_bounds(anchors, per_level)
    for (low, high), lo, hi in zip(size_ranges(levels), lower.split(per_level), upper.split(per_level)):
        assert torch.all(lo == low) and torch.all(hi == high)


def slow_assign(anchors, lower, upper, boxes, radius):
    """The rule in words, one location and one box at a time."""
    out = []
    for anchor, low, high in zip(anchors.tolist(), lower.tolist(), upper.tolist()):
        x, y = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
        side = anchor[2] - anchor[0]
        best, best_area = -1, None
        for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            near_centre = max(abs(x - (x0 + x1) / 2), abs(y - (y0 + y1) / 2)) < radius * side
            distances = (x - x0, y - y0, x1 - x, y1 - y)
            inside = min(distances) > 0
            fits = low < max(distances) < high
            area = (x1 - x0) * (y1 - y0)
            if near_centre and inside and fits and (best_area is None or area < best_area):
                best, best_area = j, area
        out.append(best)
    return torch.tensor(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignment_equals_the_per_location_rule(seed):
    levels = P3_P7
    anchors, per_level = grid(levels)
    lower, upper = location_bounds(anchors, per_level)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(12, 2, generator=gen) * torch.tensor([320.0, 256.0])
    sides = 4 + torch.rand(12, 2, generator=gen) ** 2 * 300
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=1)
    boxes = torch.cat([boxes, boxes[:3] * 0.5 + boxes[:3].mean() * 0.5])  # nested boxes: ambiguity
    matched = assign(anchors, lower, upper, boxes, 1.5)
    expected = slow_assign(anchors, lower, upper, boxes, 1.5)
    assert (matched >= 0).sum() > 50  # the case is not empty
    assert torch.equal(matched, expected)
    # Positives spread over several levels.
    assert sum(int(chunk.sum()) > 0 for chunk in (matched >= 0).split(per_level)) >= 2


def test_ambiguous_location_takes_the_smallest_box_and_centre_sampling_limits_reach():
    anchors, per_level = grid(P3_P7[:1], image=(64, 64))  # p3 only: points every 8 px
    lower, upper = location_bounds(anchors, per_level)
    big, small = [0.0, 0.0, 60.0, 60.0], [26.0, 26.0, 44.0, 44.0]
    matched = assign(anchors, lower, upper, torch.tensor([big, small]), 1.5)
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    at_32 = int(((points == torch.tensor([32.0, 32.0])).all(dim=1)).nonzero())
    assert matched[at_32] == 1  # inside both: the smaller
    # Centre sampling: the big box's positives lie within 1.5 strides (12 px) of its centre (30, 30).
    of_big = points[matched == 0]
    assert len(of_big) and ((of_big - 30).abs().max(dim=1).values < 12).all()
    assert torch.equal(assign(anchors, lower, upper, torch.zeros(0, 4), 1.5), torch.full((len(anchors),), -1))


def test_box_coding_round_trips_and_centerness_is_one_at_the_centre():
    anchors = torch.tensor([[-4.0, -4.0, 4.0, 4.0], [28.0, 8.0, 44.0, 24.0]])
    boxes = torch.tensor([[-10.0, -6.0, 20.0, 2.0], [30.0, 10.0, 40.0, 30.0]])
    codes = encode(anchors, boxes)
    assert torch.allclose(decode(codes, anchors), boxes)
    assert torch.allclose(codes[0], torch.tensor([10.0, 6.0, 20.0, 2.0]) / 8)
    centred = encode(anchors[:1], torch.tensor([[-5.0, -3.0, 5.0, 3.0]]))
    assert torch.allclose(centerness(centred), torch.ones(1))
    assert torch.allclose(centerness(codes[:1]), torch.tensor([math.sqrt(10 / 20 * 2 / 6)]))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = preset("tiny-fcos")
    config.class_names = ["a", "b", "c"]
    return build_detector(config)


def test_the_preset_builds_fcos_on_p3_p6_with_a_background_slot(tiny):
    assert isinstance(tiny, FCOS)
    assert [lv.name for lv in tiny.levels] == ["p3", "p4", "p5", "p6"]
    assert tiny.head.cls_logits.out_channels == 4  # 3 classes + label 0 (never a positive)
    assert tiny.stages() == ("head", "decoder") and tiny.anchor_sizes() == {}
    assert tiny.level_roles()["p4"] == "reach 32-64 px"
    assert "p6  stride  64" in tiny.describe()
    layers = tiny.class_layers()
    state = tiny.state_dict()
    assert all(state[key].shape[0] == rows.size(3) for key, rows in layers.items())
    assert to_dict(preset("fcos-r50"))["pyramid"] == {
        **to_dict(preset("r50-fpn"))["pyramid"],
        "finest": "c3",
        "extra": "p6p7-p5",
    }


def test_training_gives_three_losses_and_positives_per_level(tiny):
    tiny.train()
    images = [torch.rand(3, 200, 260), torch.rand(3, 180, 240)]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 90.0, 110.0], [120.0, 40.0, 140.0, 58.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = tiny(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_giou", "loss_centerness"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert tiny.head.cls_logits.weight.grad.abs().sum() > 0
    counts = tiny.level_counts()
    assert sum(c["positives"] for c in counts.values()) > 0
    tiny.eval()


def test_detections_carry_their_level_and_counts_add_up(tiny):
    tiny.eval()
    tiny.config.fcos.score_thresh = 0.05  # untrained: every score is about sqrt(0.01 * 0.5) = 0.07
    try:
        with torch.no_grad():
            (out,) = tiny([torch.rand(3, 160, 200)])
    finally:
        tiny.config.fcos.score_thresh = 0.2
    assert set(out) == {"boxes", "scores", "labels", "levels"}
    assert 0 < len(out["boxes"]) <= 100
    assert set(out["levels"].tolist()) <= {3, 4, 5, 6} and len(set(out["levels"].tolist())) >= 2
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    counts = tiny.level_counts()
    assert sum(c["detections"] for c in counts.values()) == len(out["boxes"])
    assert all(c["candidates"] <= min(c["locations"] * 4, 1000) for c in counts.values())
    # The boxes are in the original image's pixels, inside it.
    assert out["boxes"].min() >= 0 and out["boxes"][:, [0, 2]].max() <= 200 and out["boxes"][:, [1, 3]].max() <= 160


def test_positives_hook_counts_the_assignment(tiny):
    feature_sizes = {lv.name: (-(-256 // lv.stride), -(-256 // lv.stride)) for lv in tiny.levels}
    counts = tiny.positives((256, 256), feature_sizes, torch.tensor([[10.0, 10.0, 40.0, 40.0], [20, 30, 220, 240]]))
    assert counts["p3"] > 0 and counts["p6"] > 0 and counts["p4"] == 0  # 30 px box: p3; 200 px box: p6


def test_optimized_tiny_model_gives_the_same_detections(tiny):
    import copy

    fast = copy.deepcopy(tiny).optimize_for_inference()
    image = torch.rand(3, 150, 190)
    for model in (tiny, fast):
        model.config.fcos.score_thresh = 0.05
    with torch.no_grad():
        (ours,), (theirs,) = tiny([image]), fast([image])
    tiny.config.fcos.score_thresh = 0.2
    assert torch.equal(ours["labels"], theirs["labels"]) and torch.equal(ours["levels"], theirs["levels"])
    torch.testing.assert_close(ours["boxes"], theirs["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(ours["scores"], theirs["scores"], rtol=0, atol=1e-5)
