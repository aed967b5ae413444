"""Bottom-up pathways. ``build_backbone(config)`` makes one from a :class:`~fpn.config.BackboneConfig`."""

from __future__ import annotations

from fpn.backbones.resnet import ResNet, resnet
from fpn.config import BackboneConfig
from fpn.io import load_matching, read_state_dict
from fpn.layers.norms import FrozenBatchNorm2d, make_norm

__all__ = ["FrozenBatchNorm2d", "ResNet", "build_backbone", "load_imagenet_weights", "make_norm", "resnet"]


def build_backbone(config: BackboneConfig) -> ResNet:
    """A ResNet as configured, with ImageNet weights loaded if ``config.weights`` names a file or URL."""
    model = ResNet(
        config.depth,
        width=config.width,
        norm=config.norm,
        trainable_stages=config.trainable_stages,
        bn_eps=config.bn_eps,
    )
    if config.weights:
        load_imagenet_weights(model, config.weights)
    return model


def load_imagenet_weights(model: ResNet, source: str) -> None:
    """Load a torchvision-layout ImageNet ResNet checkpoint (path or URL) with strict key matching.

    Every backbone key must be present with its shape; the only keys allowed beyond them are the
    classifier's ``fc.weight`` / ``fc.bias``, which the detector does not use.
    """
    state = read_state_dict(source)
    # The classifier, and stages the model dropped (a single map from C4 needs no layer4), are not used.
    unused = ("fc.", *(f"layer{i}." for i in range(len(model.levels) + 1, 5)))
    state = {k: v for k, v in state.items() if not k.startswith(unused)}
    load_matching(model, state, source=source, what=f"ResNet-{model.depth} (width {model.width})")
