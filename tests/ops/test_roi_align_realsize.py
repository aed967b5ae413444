"""RoIAlign's inference path against its crop path at the sizes r50-fpn runs: 1000 RoIs over P2..P5 of an
800x1216 image (256 channels), inside and outside ``torch.inference_mode()``, float32 and bfloat16."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from fpn.levels import Level
from fpn.ops import MultiScaleRoIAlign

pytestmark = pytest.mark.real

INFERENCE_MODULE = sys.modules["fpn.ops.roi_align_inference"]
LEVELS = [Level(f"p{k}", 2**k, 256) for k in range(2, 6)]


def r50_inputs(gen: torch.Generator) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Channels-last pyramid maps of an 800x1216 image and 1000 proposals of every size, some across the border."""
    features = {
        lv.name: torch.randn(1, 256, 800 // lv.stride, 1216 // lv.stride, generator=gen).contiguous(
            memory_format=torch.channels_last
        )
        for lv in LEVELS
    }
    sides = torch.exp(torch.empty(1000, 2).uniform_(2.0, 6.5, generator=gen))  # 7..665 px: every level
    corners = torch.rand(1000, 2, generator=gen) * torch.tensor([1216.0, 800.0]) - sides / 4
    return features, [torch.cat([corners, corners + sides], dim=1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_path_equals_the_crop_path_for_r50_at_800_px(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    features, boxes = r50_inputs(gen)
    features = {name: f.to(dtype) for name, f in features.items()}
    pooler = MultiScaleRoIAlign(LEVELS, 7, 2)
    with torch.enable_grad():
        wanting = {name: f.detach().requires_grad_() for name, f in features.items()}
        crop, crop_levels = pooler(wanting, boxes)
        crop = crop.detach()
    assert len(set(crop_levels.tolist())) == 4  # every level pools some of them
    # bf16: the inference path rounds its bilinear weights to bf16, the crop path keeps them in fp32.
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for mode in (torch.inference_mode, torch.no_grad, contextlib.nullcontext):
        with mode():
            assert INFERENCE_MODULE.supports(list(features.values()))
            got, levels = pooler(features, boxes)
        assert torch.equal(levels, crop_levels)
        torch.testing.assert_close(got.float(), crop.float(), **tolerance)
    if dtype == torch.bfloat16:
        assert (got.float() - crop.float()).abs().mean() < 1e-3  # 4e-4 measured: below one bf16 step
