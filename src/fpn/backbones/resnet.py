"""The bottom-up pathway: ResNet-18/34/50/101 returning the stage outputs C2..C5.

Module names and parameter shapes equal torchvision's ``resnet*`` exactly (``conv1``, ``bn1``,
``layer1.0.conv1`` ... and, with a classifier, ``fc``), so ImageNet checkpoint files and the backbone part
of torchvision's detection checkpoints load with strict key matching.

Stage outputs and their strides (the paper's "bottom-up pyramid"):

====== =========== ======== ============================ =====================
level  module      stride   channels (ResNet-18/34)      channels (ResNet-50/101)
====== =========== ======== ============================ =====================
c2     layer1      4        w                            4w
c3     layer2      8        2w                           8w
c4     layer3      16       4w                           16w
c5     layer4      32       8w                           32w
====== =========== ======== ============================ =====================

with ``w = width`` (64 for the standard nets; 16 or 32 give narrow variants for CPU experiments).
"""

from __future__ import annotations

import torch
from torch import nn

from fpn.layers.norms import conv_norm, conv_norm_relu, make_norm
from fpn.levels import Level, level

# Blocks per stage for each depth, and whether the depth uses bottleneck blocks.
_ARCH: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
}

# Trainable parts from the top down, as in torchvision's ``trainable_layers``.
STAGES = ("layer4", "layer3", "layer2", "layer1", "stem")


def _norm(spec: tuple[str, float], channels: int) -> nn.Module:
    kind, eps = spec
    return make_norm(kind, channels, eps)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class _Block(nn.Module):
    # Set by FasterRCNN.optimize_for_inference: the block may overwrite its input in inference (the stage
    # loop passes each block's output on to the next block only; a forward hook that keeps a block's output
    # of an optimized backbone sees it overwritten by the next block).
    overwrite_input = False

    def owns(self, identity: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether the shortcut may receive the block's result in place: a projection's fresh output, or the
        block's input where the backbone allows it."""
        return identity is not x or self.overwrite_input


class BasicBlock(_Block):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: tuple[str, float]) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _norm(norm, planes)
        self.downsample = _projection(cin, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = conv_norm_relu(self.conv1, self.bn1, x)
        return conv_norm_relu(self.conv2, self.bn2, out, residual=identity, overwrite_residual=self.owns(identity, x))


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (carrying the stride, "ResNet v1.5"), 1x1 expand by 4: ResNet-50/101."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: tuple[str, float]) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = _norm(norm, planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = _norm(norm, planes * 4)
        self.downsample = _projection(cin, planes * 4, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = conv_norm_relu(self.conv1, self.bn1, x)
        out = conv_norm_relu(self.conv2, self.bn2, out)
        return conv_norm_relu(self.conv3, self.bn3, out, residual=identity, overwrite_residual=self.owns(identity, x))


def _projection(cin: int, cout: int, stride: int, norm: tuple[str, float]) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), _norm(norm, cout))


class ResNet(nn.Module):
    """A ResNet whose ``forward`` returns ``{"c2": [N, C2, H/4, W/4], ..., "c5": [N, C5, H/32, W/32]}``.

    Args:
        depth: 18, 34, 50 or 101.
        width: stem channels (64 = torchvision's); stage ``i`` has ``width * 2**i`` planes.
        norm: ``frozen_bn``, ``bn`` or ``gn``.
        trainable_stages: how many stages, counted from ``layer4`` down to the stem, receive gradients.
        num_classes: add torchvision's ``avgpool`` + ``fc`` classifier (for ImageNet checkpoints); the
            detector never uses it.
        bn_eps: epsilon of the BatchNorm layers (frozen or not).
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        width: int = 64,
        norm: str = "frozen_bn",
        trainable_stages: int = 5,
        num_classes: int | None = None,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if depth not in _ARCH:
            raise ValueError(f"ResNet depth must be one of {sorted(_ARCH)}, got {depth}")
        blocks, bottleneck = _ARCH[depth]
        block = Bottleneck if bottleneck else BasicBlock
        self.depth, self.width, self.norm = depth, width, norm
        spec = (norm, bn_eps)
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(spec, width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = width
        stages = []
        for i, count in enumerate(blocks):
            planes = width * 2**i
            layers = []
            for j in range(count):
                layers.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, spec))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.levels: tuple[Level, ...] = tuple(level(f"c{i + 2}", width * 2**i * block.expansion) for i in range(4))
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)
        self._init_weights()
        self.trainable_stages = trainable_stages
        self._freeze(trainable_stages)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last norm of every residual branch so each block starts as the identity: training from
        # scratch (GroupNorm, CPU) converges markedly faster. Pretrained weights overwrite this.
        for m in self.modules():
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (Bottleneck, BasicBlock)) and isinstance(last, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.zeros_(last.weight)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        if stage == "stem":
            return [self.conv1, self.bn1]
        return [getattr(self, stage)] if hasattr(self, stage) else []

    def _freeze(self, trainable_stages: int) -> None:
        if not 0 <= trainable_stages <= len(STAGES):
            raise ValueError(f"trainable_stages must be 0..{len(STAGES)}, got {trainable_stages}")
        self.frozen_stages = STAGES[trainable_stages:]
        for stage in self.frozen_stages:
            for module in self.stage_modules(stage):
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        # Frozen stages keep their BatchNorm statistics fixed too, not just their parameters.
        super().train(mode)
        if mode and self.norm == "bn":
            for stage in self.frozen_stages:
                for module in self.stage_modules(stage):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: [N, 3, H, W] normalised images -> ``{"c2": ..., "c5": ...}`` (shapes in the class docstring)."""
        x = self.maxpool(conv_norm_relu(self.conv1, self.bn1, x))
        out = {}
        for lv in self.levels:
            x = getattr(self, f"layer{lv.index - 1}")(x)
            out[lv.name] = x
        return out

    def truncate(self, last: str) -> ResNet:
        """Drop the stages after level ``last`` (e.g. ``"c4"``) so no unused parameters remain."""
        names = [lv.name for lv in self.levels]
        if last not in names:
            raise ValueError(f"{last!r} is not among {names}")
        for lv in self.levels[names.index(last) + 1 :]:
            delattr(self, f"layer{lv.index - 1}")
        self.levels = self.levels[: names.index(last) + 1]
        return self

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [N, num_classes]; only with ``num_classes`` set."""
        if not hasattr(self, "fc"):
            raise RuntimeError("this ResNet was built without a classifier (num_classes=None)")
        return self.fc(torch.flatten(self.avgpool(self.forward(x)[self.levels[-1].name]), 1))


def resnet(depth: int, **kwargs) -> ResNet:
    """Shorthand: ``resnet(50, norm="gn")``."""
    return ResNet(depth, **kwargs)
