"""Multi-scale RoI pooling: level assignment by hand, pooling against per-level roi_align, torchvision goldens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fpn.errors import ModelBuildError
from fpn.levels import Level, level
from fpn.ops.poolers import MultiScaleRoIAlign, assign_levels
from fpn.ops.roi_align import roi_align

GOLDENS = Path(__file__).resolve().parents[1] / "golden" / "ops_goldens.pt"


@pytest.fixture(scope="module")
def goldens() -> dict[str, torch.Tensor]:
    return torch.load(GOLDENS, weights_only=True)


def pyramid(names: list[str], channels: int = 3) -> list[Level]:
    return [level(name, channels) for name in names]


def square(side: float, x: float = 10.0, y: float = 10.0) -> list[float]:
    return [x, y, x + side, y + side]


def random_features(levels: list[Level], image: tuple[int, int], batch: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        lv.name: torch.randn(batch, lv.channels, image[0] // lv.stride, image[1] // lv.stride, generator=gen)
        for lv in levels
    }


# --- level assignment ---------------------------------------------------------------------------------------------


def test_assign_levels_by_hand() -> None:
    boxes = torch.tensor(
        [
            square(224),  # canonical: k0 = 4
            square(112),  # half the side: one level finer
            square(448),  # twice: one level coarser
            square(223.9),  # just below 224: floor drops to 3
            square(56),  # k = 2
            square(55.9),  # k = 1.99..., clamped to 2
            square(2),  # tiny: clamped to the finest level
            square(5000),  # huge: clamped to the coarsest level
            [0.0, 0.0, 112.0, 448.0],  # sqrt(area) = 224
            [3.0, 3.0, 3.0, 50.0],  # zero area: log2(0) = -inf, the finest level
        ]
    )
    assert assign_levels(boxes, 2, 5).tolist() == [4, 3, 5, 3, 2, 2, 2, 5, 4, 2]
    assert assign_levels(boxes, 2, 6).tolist()[7] == 6
    assert assign_levels(boxes, 3, 4).tolist() == [4, 3, 4, 3, 3, 3, 3, 4, 4, 3]
    # A different canonical choice moves everything: 224 px at p5.
    assert assign_levels(boxes[:3], 2, 6, canonical_size=224, canonical_level=5).tolist() == [5, 4, 6]


def test_assign_levels_matches_the_formula_on_random_boxes() -> None:
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 100
    wh = torch.exp(torch.rand(200, 2, generator=gen) * 7.0)  # 1 .. 1100 px sides
    boxes = torch.cat([xy, xy + wh], dim=1).double()
    sides = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    want = torch.floor(4 + torch.log2(sides / 224) + 1e-6).clamp(2, 5).long()
    assert torch.equal(assign_levels(boxes, 2, 5), want)


def test_assign_levels_inverted_box_goes_to_finest_level() -> None:
    # Negative area has no square root; torchvision would produce an undefined level (the RoI gets dropped).
    boxes = torch.tensor([[10.0, 10.0, 0.0, 20.0]])
    assert assign_levels(boxes, 2, 5).tolist() == [2]


def test_assign_levels_empty() -> None:
    out = assign_levels(torch.zeros(0, 4), 2, 5)
    assert out.dtype == torch.int64 and out.shape == (0,)


# --- pooling ------------------------------------------------------------------------------------------------------


def test_pooler_matches_roi_align_on_the_assigned_levels() -> None:
    levels = pyramid(["p2", "p3", "p4", "p5"])
    features = random_features(levels, (256, 320), batch=2, seed=1)
    boxes = [
        torch.tensor([square(224, 5, 5), square(40), square(600, -100, -50), square(112, 100, 60)]),
        torch.tensor([square(448, 0, 0), square(8, 300, 200), [30.0, 40.0, 90.0, 200.0]]),
    ]
    pooler = MultiScaleRoIAlign(levels, output_size=(3, 4), sampling_ratio=2)
    pooled, level_index = pooler(features, boxes)
    assert pooled.shape == (7, 3, 3, 4)
    assert level_index.tolist() == [4, 2, 5, 3, 5, 2, 2]  # the last is 60x160: sqrt = 98 px

    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    for n, k in enumerate(level_index.tolist()):
        want = roi_align(features[f"p{k}"], rois[n : n + 1], (3, 4), spatial_scale=1 / 2**k, sampling_ratio=2)
        torch.testing.assert_close(pooled[n : n + 1], want)


def test_pooler_keeps_input_order_and_supports_aligned() -> None:
    levels = pyramid(["p2", "p3", "p4"], channels=2)
    features = random_features(levels, (128, 128), batch=1, seed=2)
    boxes = torch.tensor([square(300), square(10), square(150), square(20)])
    pooler = MultiScaleRoIAlign(levels, output_size=2, sampling_ratio=-1, aligned=True)
    pooled, level_index = pooler(features, [boxes])
    assert level_index.tolist() == [4, 2, 3, 2]
    for n in range(4):
        k = int(level_index[n])
        single, _ = pooler(features, [boxes[n : n + 1]])
        torch.testing.assert_close(pooled[n], single[0])
        want = roi_align(features[f"p{k}"], [boxes[n : n + 1]], 2, 1 / 2**k, -1, aligned=True)
        torch.testing.assert_close(pooled[n : n + 1], want)


def test_single_level_takes_every_roi() -> None:
    levels = pyramid(["p4"], channels=2)
    features = random_features(levels, (64, 64), batch=1, seed=3)
    boxes = [torch.tensor([square(2), square(224), square(3000)])]
    pooled, level_index = MultiScaleRoIAlign(levels, output_size=2)(features, boxes)
    assert level_index.tolist() == [4, 4, 4]
    torch.testing.assert_close(pooled, roi_align(features["p4"], boxes, 2, 1 / 16, 2))


def test_images_without_boxes_and_no_boxes_at_all() -> None:
    levels = pyramid(["p2", "p3"], channels=2)
    features = {name: f.requires_grad_(True) for name, f in random_features(levels, (64, 64), 2, seed=4).items()}
    pooler = MultiScaleRoIAlign(levels, output_size=3)
    pooled, level_index = pooler(features, [torch.zeros(0, 4), torch.tensor([square(30)])])
    assert pooled.shape == (1, 2, 3, 3) and level_index.tolist() == [2]
    torch.testing.assert_close(pooled, roi_align(features["p2"], torch.tensor([[1.0, *square(30)]]), 3, 0.25, 2))

    pooled, level_index = pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert pooled.shape == (0, 2, 3, 3) and level_index.shape == (0,)
    pooled.sum().backward()  # still attached to the graph


def test_gradient_flows_to_every_used_level() -> None:
    levels = pyramid(["p2", "p3", "p4"], channels=2)
    features = {name: f.requires_grad_(True) for name, f in random_features(levels, (128, 128), 1, seed=5).items()}
    pooled, _ = MultiScaleRoIAlign(levels, output_size=2)(features, [torch.tensor([square(20), square(224)])])
    pooled.sum().backward()
    assert features["p2"].grad is not None and features["p2"].grad.abs().sum() > 0
    assert features["p4"].grad is not None and features["p4"].grad.abs().sum() > 0
    assert features["p3"].grad is None or features["p3"].grad.abs().sum() == 0


def test_construction_checks_levels() -> None:
    with pytest.raises(ModelBuildError):
        MultiScaleRoIAlign([])
    with pytest.raises(ModelBuildError):
        MultiScaleRoIAlign(pyramid(["p3", "p2"]))
    with pytest.raises(ModelBuildError):
        MultiScaleRoIAlign(pyramid(["p2", "p4"]))  # a gap would leave RoIs without a level
    with pytest.raises(ModelBuildError):
        MultiScaleRoIAlign([level("p2", 4), level("p3", 8)])  # pooled RoIs are stacked: channels must agree


def test_forward_checks_features() -> None:
    levels = pyramid(["p2", "p3"], channels=2)
    pooler = MultiScaleRoIAlign(levels)
    features = random_features(levels, (32, 32), batch=1, seed=6)
    with pytest.raises(ModelBuildError, match="p3"):
        pooler({"p2": features["p2"]}, [torch.zeros(0, 4)])
    with pytest.raises(ModelBuildError):
        pooler({"p2": features["p2"], "p3": torch.zeros(1, 5, 4, 4)}, [torch.zeros(0, 4)])
    with pytest.raises(ModelBuildError):
        pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)])  # two box lists, batch of one


# --- torchvision golden -------------------------------------------------------------------------------------------


def test_pooler_golden(goldens: dict[str, torch.Tensor]) -> None:
    levels = pyramid(["p2", "p3", "p4", "p5"])
    features = {f"p{k}": goldens[f"pooler/features_{k - 2}"] for k in (2, 3, 4, 5)}
    boxes = [goldens["pooler/boxes_0"], goldens["pooler/boxes_1"]]
    pooled, level_index = MultiScaleRoIAlign(levels, output_size=5, sampling_ratio=2)(features, boxes)
    assert torch.equal(level_index, goldens["pooler/level_index"])
    assert set(level_index.tolist()) == {2, 3, 4, 5}
    torch.testing.assert_close(pooled, goldens["pooler/pooled"], rtol=0, atol=1e-5)
