"""Assigning predictions (anchors, proposals) to ground truth, and sampling a balanced training batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BalancedPositiveNegativeSampler", "Matcher"]


class Matcher:
    """Match each prediction to its best ground-truth box by a quality matrix (usually IoU), with thresholds.

    For a ``[M, N]`` matrix (M ground truths, N predictions) the result is int64 ``[N]``: the matched gt
    index if the best quality is ``>= high_threshold``, :attr:`BETWEEN_THRESHOLDS` (-2) if it lies in
    ``[low_threshold, high_threshold)`` and :attr:`BELOW_LOW_THRESHOLD` (-1) below ``low_threshold``.

    With ``allow_low_quality_matches``, every prediction that attains some gt's best quality (ties
    included) gets back its own argmax match even if that is below the thresholds, so that every gt
    has at least one prediction (Faster R-CNN's RPN rule). As in torchvision, the restored match is the
    prediction's best gt, which need not be the gt it was best for; and a gt that overlaps nothing has
    a best quality of 0, so every prediction with quality 0 to it is restored.

    An image with no ground truth (``M = 0``) matches every prediction to -1 (background) instead of raising.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} must not exceed high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Matches (int64 ``[N]``) for a quality matrix ``[M ground truths, N predictions]``."""
        if match_quality_matrix.dim() != 2:
            raise ValueError(f"match_quality_matrix must be [M, N], got {tuple(match_quality_matrix.shape)}")
        num_gt, num_pred = match_quality_matrix.shape
        device = match_quality_matrix.device
        if num_gt == 0:
            return torch.full((num_pred,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=device)
        if num_pred == 0:
            return torch.empty(0, dtype=torch.int64, device=device)

        matched_vals, best_gt = match_quality_matrix.max(dim=0)
        matches = best_gt.clone()
        below = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[below] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS

        if self.allow_low_quality_matches:
            best_per_gt = match_quality_matrix.max(dim=1).values
            attains_best = (match_quality_matrix == best_per_gt[:, None]).any(dim=0)
            matches = torch.where(attains_best, best_gt, matches)
        return matches


class BalancedPositiveNegativeSampler:
    """Sample up to ``batch_size_per_image`` labels per image, at most ``positive_fraction`` of them positive.

    Labels are ``>= 1`` positive, ``0`` negative and negative values ignored. When positives are scarce the
    remainder is filled with negatives (torchvision's rule). Sampling uses ``torch.randperm`` with the given
    generator, so a seeded generator reproduces the batch.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(
        self, labels: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, bool masks ``(positive, negative)`` of the labels' shape marking the sampled elements."""
        pos_masks, neg_masks = [], []
        for labels_per_image in labels:
            if labels_per_image.dim() != 1:
                raise ValueError(f"labels must be 1-d per image, got shape {tuple(labels_per_image.shape)}")
            positive = torch.where(labels_per_image >= 1)[0]
            negative = torch.where(labels_per_image == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos_masks.append(self._mask(labels_per_image, positive, num_pos, generator))
            neg_masks.append(self._mask(labels_per_image, negative, num_neg, generator))
        return pos_masks, neg_masks

    @staticmethod
    def _mask(labels: Tensor, candidates: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
        """Bool mask over ``labels`` with ``count`` of ``candidates`` (indices) chosen uniformly at random."""
        rng_device = generator.device if generator is not None else candidates.device
        perm = torch.randperm(candidates.numel(), generator=generator, device=rng_device)[:count]
        mask = torch.zeros_like(labels, dtype=torch.bool)
        mask[candidates[perm.to(candidates.device)]] = True
        return mask
