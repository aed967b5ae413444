"""Every design of the seed on a real (narrow) backbone: levels, shapes, gradients."""

import pytest
import torch

from fpn.backbones import ResNet
from fpn.config import DESIGNS, PyramidConfig
from fpn.errors import ModelBuildError
from fpn.levels import level
from fpn.pyramids import build_pyramid

EXPECTED = {
    "fpn": ["p2", "p3", "p4", "p5", "p6"],
    "hierarchy": ["p2", "p3", "p4", "p5", "p6"],
    "top-down-only": ["p2", "p3", "p4", "p5", "p6"],
    "finest-only": ["p2"],
    "single-map": ["p5"],
    "image-pyramid": ["p5"],
}


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("size", [(224, 224), (333, 517), (800, 1216)])
def test_design_levels_and_shapes(design, size):
    backbone = ResNet(18, width=8, norm="gn").eval()
    pyramid = build_pyramid(PyramidConfig(design=design, channels=16), backbone.levels)
    assert [lv.name for lv in pyramid.levels] == EXPECTED[design]
    with torch.no_grad():
        out = pyramid(backbone(torch.rand(1, 3, *size)))
    assert list(out) == EXPECTED[design]
    for lv in pyramid.levels:
        assert lv.channels == 16 and lv.stride == 2**lv.index
        assert list(out[lv.name].shape) == [1, 16, *[-(-s // lv.stride) for s in size]], lv.name


def test_single_map_from_c4():
    backbone = ResNet(18, width=8)
    pyramid = build_pyramid(PyramidConfig(design="single-map", source="c4", channels=16), backbone.levels)
    assert [lv.name for lv in pyramid.levels] == ["p4"]
    assert [lv.name for lv in pyramid.in_levels] == ["c4"]


@pytest.mark.parametrize("design", DESIGNS)
def test_gradients_reach_every_trainable_parameter_and_no_frozen_one(design):
    backbone = ResNet(18, width=8, norm="gn", trainable_stages=3)
    for module in backbone.modules():  # undo the zero-init of residual branches, which blocks gradients at step 0
        if isinstance(module, torch.nn.GroupNorm):
            torch.nn.init.ones_(module.weight)
    pyramid = build_pyramid(PyramidConfig(design=design, channels=16, extra="p6p7-p5"), backbone.levels)
    backbone.truncate(pyramid.in_levels[-1].name)
    out = pyramid(backbone(torch.rand(2, 3, 96, 128)))
    sum(v.pow(2).mean() for v in out.values()).backward()
    for name, param in [*backbone.named_parameters(), *(("pyramid." + n, p) for n, p in pyramid.named_parameters())]:
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{design}: {name} got no gradient"
        else:
            assert param.grad is None, name
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1", "bn1", "layer1")) for n in frozen)


def test_inconsistent_input_levels_fail_at_build():
    with pytest.raises(ModelBuildError, match="twice the stride"):
        build_pyramid(PyramidConfig(), [level("c2", 8), level("c4", 16), level("c5", 32)])
