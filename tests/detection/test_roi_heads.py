"""The box head's inference layout: fc6 reading pooled RoIs channels-last gives the same features."""

from __future__ import annotations

import pytest
import torch

from fpn.detection import FasterRCNN
from fpn.detection.roi_heads import TwoMLPHead
from fpn.presets import preset


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_a_channels_last_box_head_equals_the_original_on_any_layout(layout: str) -> None:
    gen = torch.Generator().manual_seed(0)
    original = TwoMLPHead(16 * 7 * 7, 32)
    reordered = TwoMLPHead(16 * 7 * 7, 32)
    reordered.load_state_dict(original.state_dict())
    reordered.take_channels_last(16)
    reordered.take_channels_last(16)  # a second call changes nothing
    pooled = torch.randn(5, 7, 7, 16, generator=gen).permute(0, 3, 1, 2)  # as the inference pooler returns it
    if layout == "nchw":
        pooled = pooled.contiguous()
    with torch.inference_mode():
        torch.testing.assert_close(reordered(pooled), original(pooled), rtol=1e-5, atol=1e-6)
    assert reordered.channels_last and not original.channels_last
    assert not torch.equal(reordered.fc6.weight, original.fc6.weight)  # the columns did move


def test_an_optimized_detector_reads_pooled_rois_channels_last_with_the_same_detections() -> None:
    torch.manual_seed(0)
    plain = FasterRCNN(preset("tiny-fpn")).eval()
    fast = FasterRCNN(preset("tiny-fpn")).eval()
    fast.load_state_dict(plain.state_dict())
    image = torch.rand(3, 320, 400, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast.optimize_for_inference()
        assert fast.roi_heads.box_head.channels_last and not plain.roi_heads.box_head.channels_last
        (want,), (got,) = plain([image]), fast([image])
    assert len(want["boxes"]) > 0 and torch.equal(got["labels"], want["labels"])
    torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-2)
