"""Inference rewrites of the bottom-up pathway: folded BatchNorms, then fused convolution + add + ReLU kernels."""

import pytest
import torch

import fpn.layers.conv_pointwise as conv_pointwise
from fpn.backbones.fuse import fold_frozen_batchnorms, let_blocks_overwrite_inputs
from fpn.backbones.resnet import ResNet
from tests.layers.test_norms import close


def _resnet(depth: int) -> ResNet:
    torch.manual_seed(0)
    model = ResNet(depth, width=8, norm="frozen_bn").eval()
    for module in model.modules():  # non-trivial statistics, so that folding has work to do
        if hasattr(module, "running_var"):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.5, 0.5)
            module.weight.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("depth", [18, 50])
def test_folded_and_fused_backbone_gives_the_unoptimized_outputs(depth, monkeypatch):
    model = _resnet(depth)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        expected = model(x)
        folded = sum(isinstance(m, torch.nn.Identity) for m in model.modules())
        assert fold_frozen_batchnorms(model) == (20 if depth == 18 else 53) and folded == 0
        # Blocks accumulate into their inputs: 2 blocks per stage in a ResNet-18, 3/4/6/3 in a ResNet-50.
        assert let_blocks_overwrite_inputs(model) == (8 if depth == 18 else 16)
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        kept = x.clone()
        assert conv_pointwise.fusable(model.conv1, x)
        fused = model(x)
        assert torch.equal(x, kept)  # the image is the stem's input, never a block's
        monkeypatch.setattr(conv_pointwise, "fusable", lambda *_: False)
        separate = model(x)
    for key, value in expected.items():
        assert close(fused[key], value), key  # folding changes the rounding, not the function
        # Fusing changes at most the rounding (oneDNN may pick another kernel, e.g. on the 2x3 map of c5).
        assert close(fused[key], separate[key]), key
