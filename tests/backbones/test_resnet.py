"""The bottom-up pathway: torchvision-identical keys, strides, norms, frozen stages, checkpoint loading."""

import json
from pathlib import Path

import pytest
import torch

from fpn.backbones import FrozenBatchNorm2d, ResNet, load_imagenet_weights
from fpn.errors import CheckpointError

GOLDEN = Path(__file__).parents[1] / "golden"


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_state_dict_keys_and_shapes_equal_torchvision(depth):
    golden = json.loads((GOLDEN / "resnet_keys.json").read_text())[f"resnet{depth}"]
    model = ResNet(depth, norm="bn", num_classes=1000)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == golden


@pytest.mark.parametrize("depth, channels", [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])])
def test_levels_declare_strides_and_channels(depth, channels):
    model = ResNet(depth, width=16 if depth == 50 else 64)
    scale = 16 / 64 if depth == 50 else 1
    assert [lv.name for lv in model.levels] == ["c2", "c3", "c4", "c5"]
    assert [lv.stride for lv in model.levels] == [4, 8, 16, 32]
    assert [lv.channels for lv in model.levels] == [int(c * scale) for c in channels]


@pytest.mark.parametrize("size", [(224, 224), (333, 517)])
def test_outputs_match_declared_levels(size):
    model = ResNet(18, width=8, norm="gn").eval()
    out = model(torch.rand(1, 3, *size))
    for lv in model.levels:
        expected = [-(-s // lv.stride) for s in size]  # every stride-2 layer rounds up
        assert list(out[lv.name].shape) == [1, lv.channels, *expected]


def test_frozen_stages_have_no_gradients_and_trainable_ones_do():
    model = ResNet(18, width=8, norm="gn", trainable_stages=2)  # layer4 and layer3 train
    out = model(torch.rand(1, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    for name, param in model.named_parameters():
        trains = name.startswith(("layer3", "layer4"))
        assert param.requires_grad == trains, name
        assert (param.grad is not None) == trains, name


def test_frozen_bn_stage_keeps_statistics_in_train_mode():
    model = ResNet(18, width=8, norm="bn", trainable_stages=1).train()
    before = model.layer1[0].bn1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(model.layer1[0].bn1.running_mean, before)
    assert model.layer4[0].bn1.training


def test_frozen_batchnorm_equals_batchnorm_in_eval():
    bn = torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted and ignored
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(frozen(x), bn(x))


def test_imagenet_checkpoint_loads_strictly(tmp_path):
    source = ResNet(18, width=8, norm="bn", num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    target = ResNet(18, width=8, norm="frozen_bn")
    load_imagenet_weights(target, str(path))
    torch.testing.assert_close(target.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    torch.testing.assert_close(target.bn1.running_var, source.bn1.running_var)


def test_incompatible_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(ResNet(50, width=8).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"resnet50.pth: does not fit ResNet-18 .* unexpected keys"):
        load_imagenet_weights(ResNet(18, width=8), str(path))
    wide = tmp_path / "wide.pth"
    torch.save(ResNet(18, width=16).state_dict(), wide)
    with pytest.raises(CheckpointError, match=r"conv1.weight has shape \(16, 3, 7, 7\), expected \(8, 3, 7, 7\)"):
        load_imagenet_weights(ResNet(18, width=8), str(wide))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a readable"):
        load_imagenet_weights(ResNet(18, width=8), str(garbage))


def test_truncated_backbone_drops_unused_stage_and_still_loads(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(ResNet(18, width=8, norm="bn").state_dict(), path)
    model = ResNet(18, width=8).truncate("c4")
    assert not hasattr(model, "layer4") and [lv.name for lv in model.levels] == ["c2", "c3", "c4"]
    load_imagenet_weights(model, str(path))
    assert list(model(torch.rand(1, 3, 64, 64))) == ["c2", "c3", "c4"]
