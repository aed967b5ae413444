"""torchvision-built equivalents of fpn's presets, the key mapping between them, and the checks that they agree.

Imported by ``reference_torchvision.py`` (reference venv only: torchvision is never a dependency of fpn).

:func:`torchvision_detector` builds, from an fpn :class:`~fpn.config.ModelConfig` (design ``fpn``, extra level
``pool``), torchvision's ``FasterRCNN`` out of torchvision's own modules and ops:

* bottom-up: torchvision's ``ResNet`` with its ``BasicBlock``/``Bottleneck``. At ``width`` 64 it is the class
  itself (as ``resnet18()``/``resnet50()`` build it); torchvision hard-codes a 64-channel stem, so narrower nets
  (``small-fpn``: 32, ``tiny-fpn``: 16) are :class:`WidthResNet`, a subclass whose ``__init__`` assembles
  conv1/bn1/relu/maxpool and layer1..4 with torchvision's own ``_make_layer`` at widths w, 2w, 4w, 8w;
* norms through ``norm_layer``: ``FrozenBatchNorm2d(eps=bn_eps)``, or ``GroupNorm(gcd(C, 32), C)``, fpn's group
  rule (``fpn.backbones.norms.group_count``), for the backbone and, with ``pyramid.norm=gn``, the FPN;
* frozen layers: torchvision's ``trainable_layers`` rule of ``_resnet_fpn_extractor`` with fpn's
  ``trainable_stages`` (its own function where the FPN has 256 channels and no norm, as for r18/r50; the same
  loop where it cannot be called, since it hard-codes 256 channels);
* ``BackboneWithFPN`` (``FeaturePyramidNetwork`` + ``LastLevelMaxPool``), ``AnchorGenerator`` with the preset's
  sizes split over P2..P6 as fpn splits them, ``RPNHead``, ``MultiScaleRoIAlign(canonical_scale=...,
  canonical_level=...)``, ``TwoMLPHead`` and ``FastRCNNPredictor`` at the preset's representation size, and every
  rpn/box parameter of ``FasterRCNN`` set from the config (pre/post-NMS top-n for train and test, thresholds,
  batch sizes per image, fractions, detections per image, min/max size, mean/std).

What cannot be set: torchvision's RPN drops proposals smaller than a hard-coded 1e-3 px (fpn: ``rpn.min_size``,
1e-3 in every preset; :func:`torchvision_detector` refuses another value), and its RoI heads drop boxes under
1e-2 px (fpn: the same constant). Both transforms draw the shorter side at random among several ``min_size``
values in training; the benchmark gives both one size, so they compute alike (torchvision still draws one number
from torch's generator per image, fpn does not: the same work, other random samples of anchors and RoIs).

:func:`fpn_to_torchvision_state_dict` renames fpn's state-dict keys to torchvision's (the inverse of
``fpn.detection.torchvision_layouts.FASTER_RCNN`` for the keys it knows, plus the GroupNorm entries of the FPN blocks,
``inner_blocks.{i}.1.*`` / ``layer_blocks.{i}.1.*``). :func:`compare` runs images through two detectors and
checks, with forward hooks, the pyramid maps, the RPN's proposals, the box predictor's outputs and the detections.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.config import ModelConfig
from fpn.detection.torchvision_layouts import faster_rcnn_key

ARCH: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}
FEATURE_NAMES = ["0", "1", "2", "3"]  # torchvision's names of P2..P5 ("pool" is P6)


# -------------------------------------------------------------------------------------------------- builders
def group_norm(channels: int) -> nn.GroupNorm:
    """fpn's GroupNorm: the largest group count <= 32 that divides the channels (``gcd(C, 32)``)."""
    return nn.GroupNorm(math.gcd(channels, 32), channels)


def norm_layer(kind: str, eps: float) -> Callable[[int], nn.Module]:
    if kind == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=eps)
    if kind == "bn":
        return partial(nn.BatchNorm2d, eps=eps)
    if kind == "gn":
        return group_norm
    raise ValueError(f"no torchvision equivalent for backbone norm {kind!r}")


class WidthResNet(ResNet):
    """torchvision's ``ResNet`` with a ``width``-channel stem (torchvision's is fixed at 64), stages w..8w.

    Only ``__init__`` differs: it sets the attributes torchvision's ``_make_layer`` reads and lets that method
    build every stage, so blocks, downsampling and norms are torchvision's code at fpn's shapes. No classifier:
    the detector's ``IntermediateLayerGetter`` would drop it.
    """

    def __init__(self, block: type[nn.Module], layers: list[int], width: int, norm: Callable[[int], nn.Module]):
        nn.Module.__init__(self)
        self._norm_layer = norm
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)


def freeze_like_torchvision(body: nn.Module, trainable_layers: int) -> None:
    """``_resnet_fpn_extractor``'s freezing, verbatim: parameters outside the top ``trainable_layers`` stop."""
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in body.named_parameters():
        if all(not name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)


def torchvision_backbone(config: ModelConfig) -> BackboneWithFPN:
    """ResNet + FPN (+ P6 by max-pool) as torchvision builds them, at the config's depth, width and norms."""
    bb, pyramid = config.backbone, config.pyramid
    if pyramid.design != "fpn" or pyramid.extra != "pool":
        raise ValueError(f"no torchvision equivalent for design {pyramid.design!r} with extra {pyramid.extra!r}")
    block, layers = ARCH[bb.depth]
    norm = norm_layer(bb.norm, bb.bn_eps)
    if bb.width == 64:
        body: nn.Module = ResNet(block, layers, norm_layer=norm)  # what resnet18()/resnet50() return
    else:
        body = WidthResNet(block, layers, bb.width, norm)
    if pyramid.channels == 256 and pyramid.norm == "none":
        return _resnet_fpn_extractor(body, bb.trainable_stages)  # torchvision's own: fasterrcnn_resnet50_fpn's path
    freeze_like_torchvision(body, bb.trainable_stages)
    expansion = getattr(block, "expansion", 1)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k + 1}": name for k, name in enumerate(FEATURE_NAMES)},
        in_channels_list=[bb.width * 2**k * expansion for k in range(4)],
        out_channels=pyramid.channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=group_norm if pyramid.norm == "gn" else None,
    )


def anchor_groups(sizes: list[int], levels: int = 5) -> tuple[tuple[int, ...], ...]:
    """fpn's split of anchor sizes over the levels (``fpn.detection.anchors.split_sizes``): sorted, equal groups."""
    ordered = sorted(sizes)
    per = len(ordered) // levels
    return tuple(tuple(ordered[i * per : (i + 1) * per]) for i in range(levels))


def torchvision_detector(config: ModelConfig) -> FasterRCNN:
    """torchvision's ``FasterRCNN`` with every part and parameter set as ``config`` sets fpn's (eval mode)."""
    if config.rpn.min_size != 1e-3:
        raise ValueError("torchvision's RPN drops boxes under a hard-coded 1e-3 px; rpn.min_size differs")
    backbone = torchvision_backbone(config)
    channels, rpn, heads, transform = config.pyramid.channels, config.rpn, config.roi_heads, config.transform
    anchors = AnchorGenerator(
        sizes=anchor_groups(config.anchors.sizes), aspect_ratios=(tuple(config.anchors.aspect_ratios),) * 5
    )
    model = FasterRCNN(
        backbone,
        num_classes=None,  # given by the predictor
        min_size=tuple(transform.min_size),
        max_size=transform.max_size,
        image_mean=list(transform.mean),
        image_std=list(transform.std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn.post_nms_top_n_test,
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        rpn_score_thresh=rpn.score_thresh,
        box_roi_pool=MultiScaleRoIAlign(
            FEATURE_NAMES,
            output_size=heads.pooler_size,
            sampling_ratio=heads.sampling_ratio,
            canonical_scale=heads.canonical_size,
            canonical_level=heads.canonical_level,
        ),
        box_head=TwoMLPHead(channels * heads.pooler_size**2, heads.representation_size),
        box_predictor=FastRCNNPredictor(heads.representation_size, config.num_classes),
        box_score_thresh=heads.score_thresh,
        box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_image,
        box_fg_iou_thresh=heads.fg_iou_thresh,
        box_bg_iou_thresh=heads.bg_iou_thresh,
        box_batch_size_per_image=heads.batch_size_per_image,
        box_positive_fraction=heads.positive_fraction,
    )
    return model.eval()


def fit_torchvision_input(model: FasterRCNN, height: int, width: int) -> None:
    """As ``fpn.bench.fit_input``: the resize keeps a ``height x width`` image as it is (one size, also in training)."""
    model.transform.min_size = (min(height, width),)
    model.transform.max_size = max(height, width)


# -------------------------------------------------------------------------------------------------- weights
def torchvision_key(key: str) -> str:
    """torchvision's name of one of fpn's state-dict keys (design ``fpn``; plain or GroupNorm FPN blocks)."""
    parts = key.split(".")
    if parts[0] == "backbone":
        return "backbone.body." + key[len("backbone.") :]
    if parts[0] == "pyramid" and parts[1] in ("lateral", "smooth"):
        block = "inner_blocks" if parts[1] == "lateral" else "layer_blocks"
        rest = parts[3:] if len(parts) > 4 else ["0", *parts[3:]]  # conv.{leaf} -> 0.{leaf}; 0/1.{leaf} as they are
        return f"backbone.fpn.{block}.{int(parts[2][1:]) - 2}." + ".".join(rest)
    if key.startswith("rpn.head.conv."):
        return "rpn.head.conv.0.0." + parts[-1]
    if key.startswith(("rpn.head.", "roi_heads.box_head.", "roi_heads.box_predictor.")):
        return key
    raise KeyError(f"no torchvision name for fpn key {key!r}")


def fpn_to_torchvision_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename fpn's state dict for :func:`torchvision_detector`'s model; checked against fpn's own converter.

    Every key that ``fpn.detection.checkpoint`` converts from torchvision (plain FPN blocks) must come back to itself.
    (Its converter knows no GroupNorm FPN blocks; their keys are mapped here only.)
    """
    out = {}
    for key, value in state.items():
        name = torchvision_key(key)
        back = faster_rcnn_key(name)
        gn_block = key.startswith("pyramid.") and key.count(".") == 4  # conv/norm inside: the converter has none
        if back is not None and back != key and not gn_block:
            raise AssertionError(f"{key} -> {name} -> {back}: the mapping does not invert fpn.detection.checkpoint's")
        out[name] = value
    return out


def load_fpn_weights(reference: nn.Module, ours: nn.Module) -> None:
    """Copy fpn's weights into the torchvision model, strictly (every key and shape must match)."""
    reference.load_state_dict(fpn_to_torchvision_state_dict(ours.state_dict()), strict=True)


def trainable_names(model: nn.Module, *, torchvision: bool) -> set[str]:
    """Names (in fpn's spelling) of the parameters that receive gradients."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    if not torchvision:
        return {torchvision_key(name) for name in names}
    return names


# -------------------------------------------------------------------------------------------------- checks
def match_boxes(
    a: torch.Tensor,
    b: torch.Tensor,
    tolerance: float,
    labels_a: torch.Tensor | None = None,
    labels_b: torch.Tensor | None = None,
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """One-to-one matches ``(i, j)`` of boxes (same label, every coordinate within ``tolerance``), and distances.

    Greedy in ``a``'s order, each taking the closest unused box of ``b``. Two lists in the same order match on
    the diagonal without the search.
    """
    distance = torch.cdist(a.double(), b.double(), p=float("inf"))
    if labels_a is not None and labels_b is not None:
        distance[labels_a[:, None] != labels_b[None, :]] = float("inf")
    if len(a) == len(b) and bool((distance.diagonal() <= tolerance).all()):
        return [(i, i) for i in range(len(a))], distance
    used: set[int] = set()
    pairs = []
    for i in range(len(a)):
        for j in distance[i].argsort().tolist():
            if j not in used:
                if distance[i, j] <= tolerance:
                    used.add(j)
                    pairs.append((i, j))
                break
    return pairs, distance


@contextlib.contextmanager
def capture(parts: dict[str, nn.Module]) -> Iterator[dict[str, Any]]:
    """Record each module's last output under its key while the block runs."""
    outputs: dict[str, Any] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, key=key: outputs.__setitem__(key, out))
        for key, module in parts.items()
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _parts(model: nn.Module) -> dict[str, nn.Module]:
    features = model.pyramid if hasattr(model, "pyramid") else model.backbone  # fpn's, or torchvision's
    return {"features": features, "rpn": model.rpn, "predictor": model.roi_heads.box_predictor}


def compare(
    reference: nn.Module,
    model: nn.Module,
    images: list[torch.Tensor],
    tolerance: float,
    context: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Each image through both detectors: pyramid maps, proposals, box-predictor outputs and detections.

    ``context`` wraps the second model's calls only (e.g. bf16 autocast).

    Per image: detection counts, one-to-one matches (same label, boxes within ``tolerance`` px, in any order:
    equal scores may come out in either order; ``reordered`` counts positions where the lists differ in order
    only), the largest box and score differences, and the same for the RPN's proposals. Per model: the largest
    difference of the pyramid maps (P2..P6) against their largest magnitude, and of the box predictor's outputs
    on matched proposals (only where every proposal was matched). ``agree``: equal counts, all matched, for both
    proposals and detections, and pyramid maps of equal shapes.
    """
    per_image = []
    feature_diff, feature_scale, shapes_equal = 0.0, 0.0, True
    predictor_diff: float | None = None
    for image in images:
        with capture(_parts(reference)) as theirs_parts, capture(_parts(model)) as our_parts, torch.inference_mode():
            theirs = reference([image])[0]
            with context():
                mine = model([image])[0]
        for a, b in zip(theirs_parts["features"].values(), our_parts["features"].values(), strict=True):
            shapes_equal &= a.shape == b.shape
            if a.shape == b.shape:
                feature_diff = max(feature_diff, float((a.float() - b.float()).abs().max()))
                feature_scale = max(feature_scale, float(a.abs().max()))
        their_props, my_props = theirs_parts["rpn"][0][0], our_parts["rpn"][0][0]
        prop_pairs, prop_distance = match_boxes(their_props, my_props, tolerance)
        if len(their_props) == len(my_props) == len(prop_pairs):  # the predictor's rows follow the proposals
            rows_a, rows_b = (list(index) for index in zip(*prop_pairs)) if prop_pairs else ([], [])
            for a, b in zip(theirs_parts["predictor"], our_parts["predictor"], strict=True):
                diff = float((a[rows_a].float() - b[rows_b].float()).abs().max()) if rows_a else 0.0
                predictor_diff = max(predictor_diff or 0.0, diff)
        pairs, distance = match_boxes(theirs["boxes"], mine["boxes"], tolerance, theirs["labels"], mine["labels"])
        count = len(theirs["boxes"])
        record: dict[str, Any] = {
            "torchvision": count,
            "fpn": len(mine["boxes"]),
            "matched": len(pairs),
            "reordered": 0 if len(mine["boxes"]) != count else int((distance.diagonal() > tolerance).sum()),
            "max_box_diff_px": max((float(distance[i, j]) for i, j in pairs), default=0.0),
            "max_score_diff": max((abs(float(theirs["scores"][i] - mine["scores"][j])) for i, j in pairs), default=0.0),
            "proposals": {
                "torchvision": len(their_props),
                "fpn": len(my_props),
                "matched": len(prop_pairs),
                "max_diff_px": max((float(prop_distance[i, j]) for i, j in prop_pairs), default=0.0),
            },
        }
        props = record["proposals"]
        record["agree"] = record["fpn"] == count == len(pairs) and props["fpn"] == props["torchvision"] == len(
            prop_pairs
        )
        per_image.append(record)
    return {
        "agree": shapes_equal and all(r["agree"] for r in per_image),
        "tolerance_px": tolerance,
        "feature_shapes_equal": shapes_equal,
        "features_max_abs_diff": feature_diff,
        "features_max_abs": feature_scale,
        "predictor_max_abs_diff": predictor_diff,
        "images": per_image,
    }
