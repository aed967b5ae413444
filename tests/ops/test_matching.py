"""Matcher and balanced sampler against straightforward per-element references."""

from __future__ import annotations

import pytest
import torch

from fpn.ops.boxes import box_iou
from fpn.ops.matching import BalancedPositiveNegativeSampler, Matcher


def matcher_reference(quality: torch.Tensor, high: float, low: float, allow_low_quality: bool) -> list[int]:
    """torchvision's rule, one prediction at a time."""
    num_gt, num_pred = quality.shape
    q = quality.tolist()
    best_gt = [max(range(num_gt), key=lambda g: (q[g][p], -g)) for p in range(num_pred)]  # first max wins
    matches = []
    for p in range(num_pred):
        value = q[best_gt[p]][p]
        matches.append(best_gt[p] if value >= high else (-2 if value >= low else -1))
    if allow_low_quality:
        for g in range(num_gt):
            best = max(q[g])
            for p in range(num_pred):
                if q[g][p] == best:
                    matches[p] = best_gt[p]  # the prediction's own best gt, not necessarily g
    return matches


@pytest.mark.parametrize("allow_low_quality", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_matches_reference(allow_low_quality: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # Quantised values make ties (between gts, and for a gt's best) common. float64, so that the thresholds
    # compare the same way in Python and in torch (in float32 torch rounds 0.7 too, Python does not).
    quality = (torch.rand(5, 40, generator=gen, dtype=torch.float64) * 10).floor() / 10
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=allow_low_quality)
    got = matcher(quality)
    assert got.dtype == torch.int64
    assert got.tolist() == matcher_reference(quality, 0.7, 0.3, allow_low_quality)


def test_matcher_thresholds_are_inclusive_below() -> None:
    quality = torch.tensor([[0.7, 0.69, 0.3, 0.29, 0.0]])
    assert Matcher(0.7, 0.3)(quality).tolist() == [0, -2, -2, -1, -1]
    # Equal thresholds: no "between" band.
    assert Matcher(0.5, 0.5)(torch.tensor([[0.5, 0.49]])).tolist() == [0, -1]


def test_low_quality_matches_restore_the_best_prediction_for_each_gt() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    preds = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0
            [104.0, 104.0, 116.0, 116.0],  # IoU 0.17 with gt 1: below 0.3
            [104.0, 100.0, 116.0, 112.0],  # gt 1 best (IoU 0.33), between the thresholds
            [50.0, 50.0, 60.0, 60.0],  # nothing
        ]
    )
    quality = box_iou(gt, preds)
    assert Matcher(0.7, 0.3)(quality).tolist() == [0, -1, -2, -1]
    got = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    assert got.tolist() == matcher_reference(quality, 0.7, 0.3, True)
    best_for_gt1 = int(quality[1].argmax())
    assert got[best_for_gt1] == 1


def test_low_quality_quirk_for_a_gt_that_overlaps_nothing() -> None:
    # torchvision's rule, kept as is: a gt whose best IoU is 0 "ties" with every prediction at IoU 0, so all of
    # them get their own argmax back, even positive matches to gt 0 for predictions that overlap no gt at all.
    # Ground truth must therefore be filtered (no empty or out-of-image boxes) before matching.
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [500.0, 500.0, 510.0, 510.0]])
    preds = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]])
    quality = box_iou(gt, preds)
    assert Matcher(0.7, 0.3)(quality).tolist() == [0, -1]
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality).tolist() == [0, 0]


def test_no_ground_truth_means_all_background() -> None:
    for allow in (False, True):
        got = Matcher(0.7, 0.3, allow)(torch.zeros(0, 6))
        assert got.tolist() == [Matcher.BELOW_LOW_THRESHOLD] * 6


def test_no_predictions() -> None:
    got = Matcher(0.7, 0.3, True)(torch.zeros(3, 0))
    assert got.dtype == torch.int64 and got.shape == (0,)


def test_matcher_validates_arguments() -> None:
    with pytest.raises(ValueError):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError):
        Matcher(0.7, 0.3)(torch.zeros(4))


# --- sampler ------------------------------------------------------------------------------------------------------


def test_sampler_counts_and_membership() -> None:
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 20)
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    (pos,), (neg,) = sampler([labels], generator=torch.Generator().manual_seed(0))
    assert pos.dtype == torch.bool and pos.shape == labels.shape
    assert int(pos.sum()) == 10  # only 10 positives exist (wanted 16)
    assert int(neg.sum()) == 54  # the rest of the batch is filled with negatives
    assert bool((labels[pos] >= 1).all()) and bool((labels[neg] == 0).all())
    assert not bool((pos & neg).any())


def test_sampler_caps_positives_and_handles_few_negatives() -> None:
    labels = torch.tensor([2] * 50 + [0] * 5)  # any label >= 1 is positive
    (pos,), (neg,) = BalancedPositiveNegativeSampler(20, 0.5)([labels])
    assert int(pos.sum()) == 10 and int(neg.sum()) == 5


def test_sampler_is_reproducible_with_a_generator_and_random_without() -> None:
    labels = torch.tensor([1] * 40 + [0] * 400)
    sampler = BalancedPositiveNegativeSampler(32, 0.25)
    a = sampler([labels, labels], generator=torch.Generator().manual_seed(7))
    b = sampler([labels, labels], generator=torch.Generator().manual_seed(7))
    c = sampler([labels, labels], generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))
    assert not all(torch.equal(x, y) for x, y in zip(a[1], c[1]))
    assert not torch.equal(a[1][0], a[1][1])  # images draw different samples


def test_sampler_empty_and_all_ignored() -> None:
    sampler = BalancedPositiveNegativeSampler(16, 0.5)
    pos, neg = sampler([torch.zeros(0, dtype=torch.int64), torch.full((5,), -1)])
    assert pos[0].shape == (0,) and int(pos[1].sum()) == 0 and int(neg[1].sum()) == 0
    assert sampler([]) == ([], [])


def test_sampler_with_matcher_output_for_an_image_without_gt() -> None:
    matches = Matcher(0.7, 0.3)(torch.zeros(0, 30))
    labels = (matches >= 0).long()  # all background
    (pos,), (neg,) = BalancedPositiveNegativeSampler(8, 0.5)([labels])
    assert int(pos.sum()) == 0 and int(neg.sum()) == 8


def test_sampler_validates_arguments() -> None:
    with pytest.raises(ValueError):
        BalancedPositiveNegativeSampler(0, 0.5)
    with pytest.raises(ValueError):
        BalancedPositiveNegativeSampler(8, 1.5)
    with pytest.raises(ValueError):
        BalancedPositiveNegativeSampler(8, 0.5)([torch.zeros(2, 2)])
