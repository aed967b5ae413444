"""torchvision's detection state dicts, recognised from their keys and renamed to this project's modules.

Each :class:`TorchvisionLayout` says how to recognise one torchvision model's state dict, how to refuse its
look-alikes by name (the v2 models, whose blocks carry norms), and how to convert it: the matching preset
(the architecture) and the weights under this project's names. :data:`LAYOUTS` lists them all; a new
torchvision detector is one more entry. Reading and unwrapping files is :mod:`fpn.detection.checkpoint`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fpn.config import ModelConfig
from fpn.errors import CheckpointError
from fpn.presets import fcos_r50, r50_fpn

State = Mapping[str, Any]


@dataclass(frozen=True)
class TorchvisionLayout:
    """One torchvision detector's state-dict layout."""

    name: str  # torchvision's builder, e.g. "fasterrcnn_resnet50_fpn"
    recognise: Callable[[State], bool]  # its keys, from a glance at a few
    refuse: Callable[[State], str | None]  # the name of a look-alike this project does not build, else None
    convert: Callable[[State, str], tuple[ModelConfig, dict[str, Any]]]  # (architecture, renamed weights)


def rename_all(state: State, rename: Callable[[str], str | None], *, source: str, model: str) -> dict[str, Any]:
    """Every key through ``rename``; a key it does not know is refused in one line naming the file."""
    out = {}
    for key, value in state.items():
        ours = rename(key)
        if ours is None:
            raise CheckpointError(f"{source}: key {key!r} is not part of torchvision's {model}")
        out[ours] = value
    return out


def backbone_body_key(key: str) -> str | None:
    """``backbone.body.layer1...`` -> ``backbone.layer1...`` (torchvision's IntermediateLayerGetter)."""
    return "backbone." + key[len("backbone.body.") :] if key.startswith("backbone.body.") else None


def fpn_block_renamer(first: int) -> Callable[[str], str | None]:
    """torchvision's ``backbone.fpn.{inner,layer}_blocks.{i}[.0].{leaf}`` -> our lateral / smoothing convs.

    Block ``i`` reads the ``i``-th returned backbone stage, ``c{first + i}``: Faster R-CNN returns C2..C5
    (``first=2``), RetinaNet and FCOS C3..C5 (``first=3``). Only the plain-conv layouts are accepted
    (``inner_blocks.{i}.weight``, or ``inner_blocks.{i}.0.weight`` in newer torchvision): a norm inside a
    block is a v2 model's.
    """

    def rename(key: str) -> str | None:
        parts = key.split(".")
        if not key.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")):
            return None
        if not (len(parts) == 5 or (len(parts) == 6 and parts[4] == "0")):
            return None
        index, leaf = int(parts[3]) + first, parts[-1]
        if parts[2] == "inner_blocks":
            return f"pyramid.lateral.c{index}.{leaf}"
        return f"pyramid.smooth.p{index}.{leaf}"

    return rename


def has_norm_in_fpn_blocks(state: State) -> bool:
    """v2 models put a norm after each FPN conv: ``backbone.fpn.inner_blocks.{i}.1.*``."""
    return any(k.startswith("backbone.fpn.inner_blocks.") and k.split(".")[4:5] == ["1"] for k in state)


# ------------------------------------------------------------------------------------------ Faster R-CNN


def faster_rcnn_key(key: str) -> str | None:
    """Our name for a torchvision ``fasterrcnn_resnet50_fpn`` key (its old and new module layouts), else None.

    Only the plain-conv layouts are accepted: ``inner_blocks.{i}[.0].{leaf}``, ``rpn.head.conv[.0.0].{leaf}``.
    The v2 model (norms inside these blocks: ``inner_blocks.{i}.1.*``) is a different architecture.
    """
    parts = key.split(".")
    if key.startswith("backbone.body."):
        return backbone_body_key(key)
    if key.startswith("backbone.fpn."):
        return fpn_block_renamer(2)(key)
    if key.startswith("rpn.head.conv."):
        if len(parts) == 4 or (len(parts) == 6 and parts[3:5] == ["0", "0"]):
            return f"rpn.head.conv.{parts[-1]}"
        return None
    if key.startswith(("rpn.head.", "roi_heads.box_head.fc", "roi_heads.box_predictor.")):
        return key
    return None


def is_faster_rcnn(state: State) -> bool:
    return "backbone.body.conv1.weight" in state and any(k.startswith("rpn.head.") for k in state)


def faster_rcnn_look_alike(state: State) -> str | None:
    return "fasterrcnn_resnet50_fpn_v2" if has_norm_in_fpn_blocks(state) else None


def convert_faster_rcnn(state: State, source: str) -> tuple[ModelConfig, dict[str, Any]]:
    weights = rename_all(state, faster_rcnn_key, source=source, model="fasterrcnn_resnet50_fpn")
    config = r50_fpn()
    # torchvision runs its COCO checkpoint with FrozenBatchNorm eps = 0 (overwrite_eps); to get its
    # detections, so must we. A model fine-tuned from ImageNet weights used 1e-5: backbone.bn_eps=1e-5.
    config.backbone.bn_eps = 0.0
    classes = weights.get("roi_heads.box_predictor.cls_score.weight")
    if classes is None:
        raise CheckpointError(f"{source}: torchvision layout without roi_heads.box_predictor.cls_score.weight")
    if classes.shape[0] != config.num_classes:
        # A fine-tuned torchvision model: same architecture, its own classes (names unknown).
        config.class_names = [f"class_{i}" for i in range(1, classes.shape[0])]
    return config, weights


FASTER_RCNN = TorchvisionLayout("fasterrcnn_resnet50_fpn", is_faster_rcnn, faster_rcnn_look_alike, convert_faster_rcnn)

# -------------------------------------------------------------------------------------------------- FCOS

#: torchvision's FCOS head modules -> ours (:class:`fpn.detection.fcos.FCOSHead`).
FCOS_HEAD = {
    "head.classification_head.conv": "head.cls_tower",
    "head.regression_head.conv": "head.box_tower",
    "head.classification_head.cls_logits": "head.cls_logits",
    "head.regression_head.bbox_reg": "head.bbox_pred",
    "head.regression_head.bbox_ctrness": "head.centerness",
}


def fcos_key(key: str) -> str | None:
    """Our name for a torchvision ``fcos_resnet50_fpn`` key, else None.

    Its towers are ``nn.Sequential`` s of (conv, GroupNorm, ReLU) x 4: ``conv.{3i}`` is our layer ``i``'s
    ``conv``, ``conv.{3i+1}`` its ``norm``. P6 and P7 are ``backbone.fpn.extra_blocks.p6/p7``.
    """
    if key.startswith("backbone.body."):
        return backbone_body_key(key)
    if key.startswith("backbone.fpn.extra_blocks."):
        parts = key.split(".")
        return f"pyramid.extra.{parts[3]}.{parts[4]}" if len(parts) == 5 and parts[3] in ("p6", "p7") else None
    if key.startswith("backbone.fpn."):
        return fpn_block_renamer(3)(key)
    module, _, leaf = key.rpartition(".")
    if module in FCOS_HEAD:
        return f"{FCOS_HEAD[module]}.{leaf}"
    tower, _, index = module.rpartition(".")
    if tower in ("head.classification_head.conv", "head.regression_head.conv") and index.isdigit():
        layer, role = divmod(int(index), 3)
        if role < 2:
            return f"{FCOS_HEAD[tower]}.{layer}.{('conv', 'norm')[role]}.{leaf}"
    return None


def is_fcos(state: State) -> bool:
    """FCOS's regression branch has a centerness output; RetinaNet's (same head names otherwise) has none."""
    return "backbone.body.conv1.weight" in state and "head.regression_head.bbox_ctrness.weight" in state


def fcos_look_alike(state: State) -> str | None:
    return None  # torchvision has no other FCOS


def convert_fcos(state: State, source: str) -> tuple[ModelConfig, dict[str, Any]]:
    weights = rename_all(state, fcos_key, source=source, model="fcos_resnet50_fpn")
    config = fcos_r50()  # FrozenBatchNorm eps 1e-5: torchvision calls no overwrite_eps for FCOS
    classes = weights.get("head.cls_logits.weight")
    if classes is None:
        raise CheckpointError(f"{source}: torchvision FCOS layout without head.classification_head.cls_logits.weight")
    if classes.shape[0] != config.num_classes:
        config.class_names = [f"class_{i}" for i in range(1, classes.shape[0])]
    return config, weights


FCOS = TorchvisionLayout("fcos_resnet50_fpn", is_fcos, fcos_look_alike, convert_fcos)

#: Every torchvision detector layout this project loads, tried in order.
LAYOUTS: tuple[TorchvisionLayout, ...] = (FASTER_RCNN, FCOS)
