"""Multi-scale RoI pooling: each RoI is pooled from the pyramid level that suits its size (FPN paper, eq. 1).

A RoI of ``w x h`` input pixels goes to level ``k = floor(k0 + log2(sqrt(w * h) / 224))``, clamped to the
levels available: a 224x224 RoI comes from ``p{k0}`` (``p4`` by default), one twice as large from the next
coarser level. The levels are declared by :class:`fpn.levels.Level`, so the spatial scale of each map is
``1 / stride`` by construction instead of being guessed from feature and image sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fpn.errors import ModelBuildError
from fpn.levels import Level, check_levels
from fpn.ops.boxes import box_area
from fpn.ops.roi_align import _pair, boxes_to_rois, roi_align_levels

__all__ = ["MultiScaleRoIAlign", "assign_levels"]


def assign_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_size: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """Pyramid level ``k`` (int64 ``[K]``) for each box ``[K, 4]`` in input pixels.

    ``k = floor(canonical_level + log2(sqrt(area) / canonical_size) + eps)`` clamped to
    ``[min_level, max_level]``, computed in the boxes' precision exactly as torchvision's ``LevelMapper``
    (the ``eps`` guards boxes of exactly ``224 * 2**j``, whose log2 could round just below an integer).
    Zero-area boxes land on ``min_level``; boxes with a negative area (inverted corners), for which the
    formula is undefined, are sent to ``min_level`` too rather than to no level at all.
    """
    if min_level > max_level:
        raise ValueError(f"min_level {min_level} is above max_level {max_level}")
    scale = torch.sqrt(box_area(boxes))
    target = torch.floor(canonical_level + torch.log2(scale / canonical_size) + eps)
    target = torch.nan_to_num(target, nan=min_level).clamp(min=min_level, max=max_level)
    return target.to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over a feature pyramid, picking one level per RoI.

    Args:
        levels: the pyramid levels to pool from (consecutive, fine to coarse, equal channels).
        output_size: side of the pooled map, or ``(height, width)``.
        sampling_ratio: samples per bin and axis for :func:`~fpn.ops.roi_align.roi_align` (``<= 0``: adaptive).
        canonical_size, canonical_level: ``224`` and ``k0 = 4`` of the paper's eq. 1.
        aligned: passed to :func:`~fpn.ops.roi_align.roi_align` (torchvision's pooler always uses ``False``).
    """

    def __init__(
        self,
        levels: Sequence[Level],
        output_size: int | Sequence[int] = 7,
        sampling_ratio: int = 2,
        canonical_size: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        levels = tuple(levels)
        check_levels(levels, consumer="RoI pooler", channels=levels[0].channels if levels else None)
        indices = [lv.index for lv in levels]
        if indices != list(range(indices[0], indices[0] + len(indices))):
            # A gap would leave RoIs assigned to a level that is not there.
            raise ModelBuildError(f"RoI pooler needs consecutive levels, got {[lv.name for lv in levels]}")
        self.levels = levels
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.aligned = aligned

    @property
    def min_level(self) -> int:
        return self.levels[0].index

    @property
    def max_level(self) -> int:
        return self.levels[-1].index

    def extra_repr(self) -> str:
        names = ", ".join(lv.name for lv in self.levels)
        return (
            f"levels=[{names}], output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
            f"canonical=({self.canonical_size}, p{self.canonical_level}), aligned={self.aligned}"
        )

    def assign(self, boxes: Tensor) -> Tensor:
        """Level index ``k`` (int64 ``[K]``) of each box ``[K, 4]`` (input pixels) for this pooler's levels."""
        if len(self.levels) == 1:
            return torch.full((boxes.shape[0],), self.min_level, dtype=torch.int64, device=boxes.device)
        return assign_levels(
            boxes, self.min_level, self.max_level, self.canonical_size, self.canonical_level, eps=1e-6
        ).to(boxes.device)

    def forward(self, features: Mapping[str, Tensor], boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Pool ``boxes`` (per image ``[Ki, 4]``, input pixels) from ``features`` (level name -> ``[N, C, H, W]``).

        Returns ``(pooled [sum Ki, C, out_h, out_w], level_index [sum Ki])`` in the order of the
        concatenated boxes; ``level_index`` holds the ``k`` of the level each RoI was pooled from.
        """
        self._check_features(features, len(boxes))
        first = features[self.levels[0].name]
        rois = boxes_to_rois(boxes).to(device=first.device) if len(boxes) else first.new_zeros(0, 5)
        level_index = self.assign(rois[:, 1:])

        # Every level pools straight into one result, each RoI into its input position.
        wheres = [torch.where(level_index == lv.index)[0] for lv in self.levels]
        result = roi_align_levels(
            [features[lv.name] for lv in self.levels],
            [rois[where] for where in wheres],
            wheres,
            rois.shape[0],
            self.output_size,
            [1.0 / lv.stride for lv in self.levels],
            self.sampling_ratio,
            self.aligned,
        )
        return result, level_index

    def _check_features(self, features: Mapping[str, Tensor], num_images: int) -> None:
        missing = [lv.name for lv in self.levels if lv.name not in features]
        if missing:
            raise ModelBuildError(f"RoI pooler needs levels {missing}, but features hold only {list(features)}")
        for lv in self.levels:
            feat = features[lv.name]
            if feat.dim() != 4 or feat.shape[1] != lv.channels:
                raise ModelBuildError(
                    f"RoI pooler: {lv.name} should be [N, {lv.channels}, H, W], got {tuple(feat.shape)}"
                )
            if feat.shape[0] < num_images:
                raise ModelBuildError(f"RoI pooler: {num_images} box lists but {lv.name} has batch {feat.shape[0]}")
