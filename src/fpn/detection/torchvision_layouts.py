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
from fpn.presets import fcos_r50, r50_fpn, retinanet_r50

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


def extra_block_key(key: str) -> str | None:
    """torchvision's ``backbone.fpn.extra_blocks.{p6,p7}.{weight,bias}`` (``LastLevelP6P7``) -> ``pyramid.extra...``."""
    parts = key.split(".")
    if len(parts) == 5 and parts[:3] == ["backbone", "fpn", "extra_blocks"] and parts[3] in ("p6", "p7"):
        return f"pyramid.extra.{parts[3]}.{parts[4]}"
    return None


def own_classes(config: ModelConfig, weights: Mapping[str, Any], key: str, slots: int, source: str) -> None:
    """Placeholder names for a fine-tuned torchvision model's own classes (``slots`` outputs of ``key`` per
    class, background's included), when their count is not COCO's 91; refuses weights without ``key``."""
    rows = weights.get(key)
    if rows is None:
        raise CheckpointError(f"{source}: torchvision layout without {key}")
    if rows.shape[0] != config.num_classes * slots:
        config.class_names = [f"class_{i}" for i in range(1, rows.shape[0] // slots)]


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
    # A fine-tuned torchvision model: same architecture, its own classes (names unknown).
    own_classes(config, weights, "roi_heads.box_predictor.cls_score.weight", 1, source)
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
    own_classes(config, weights, "head.cls_logits.weight", 1, source)
    return config, weights


FCOS = TorchvisionLayout("fcos_resnet50_fpn", is_fcos, fcos_look_alike, convert_fcos)

# --------------------------------------------------------------------------------------------- RetinaNet

#: torchvision's RetinaNet head modules -> ours (:class:`fpn.detection.retinanet.RetinaNetHead`).
RETINANET_HEAD = {
    "head.classification_head.conv": "head.cls_subnet",
    "head.regression_head.conv": "head.box_subnet",
    "head.classification_head.cls_logits": "head.cls_logits",
    "head.regression_head.bbox_reg": "head.bbox_pred",
}
RETINANET_ANCHORS = 9  # 3 sizes x 3 aspect ratios per cell


def retinanet_key(key: str) -> str | None:
    """Our name for a torchvision ``retinanet_resnet50_fpn`` key (its old and new module layouts), else None.

    A subnet is 4 x (conv, ReLU): ``conv.{i}.0.{leaf}`` (``Conv2dNormActivation``, torchvision >= 0.13) or
    ``conv.{2i}.{leaf}`` (a flat ``nn.Sequential``, the released COCO checkpoint's layout, which torchvision
    renames on load) is our layer ``i``'s ``conv``. A norm in the subnets (``conv.{i}.1``) is the v2 model's.
    """
    if key.startswith("backbone.body."):
        return backbone_body_key(key)
    if key.startswith("backbone.fpn.extra_blocks."):
        return extra_block_key(key)
    if key.startswith("backbone.fpn."):
        return fpn_block_renamer(3)(key)
    module, _, leaf = key.rpartition(".")
    if module in RETINANET_HEAD:
        return f"{RETINANET_HEAD[module]}.{leaf}"
    parts = module.split(".")
    tower = ".".join(parts[:3])
    if tower not in RETINANET_HEAD or not all(part.isdigit() for part in parts[3:]):
        return None
    if len(parts) == 5 and parts[4] == "0":  # conv.{i}.0
        return f"{RETINANET_HEAD[tower]}.{int(parts[3])}.conv.{leaf}"
    if len(parts) == 4 and int(parts[3]) % 2 == 0:  # conv.{2i}
        return f"{RETINANET_HEAD[tower]}.{int(parts[3]) // 2}.conv.{leaf}"
    return None


def is_retinanet_like(state: State) -> bool:
    """RetinaNet's head names (FCOS has the same ones, plus a centerness output)."""
    return (
        "backbone.body.conv1.weight" in state
        and "head.classification_head.cls_logits.weight" in state
        and "head.regression_head.bbox_ctrness.weight" not in state
    )


def retinanet_v2(state: State) -> bool:
    """v2: GroupNorm in the subnets (``conv.{i}.1.weight``) and P6 from C5 (2048 input channels)."""
    norm = any(k.startswith("head.classification_head.conv.") and k.split(".")[4:5] == ["1"] for k in state)
    p6 = state.get("backbone.fpn.extra_blocks.p6.weight")
    return norm or (p6 is not None and p6.shape[1] != 256) or has_norm_in_fpn_blocks(state)


def is_retinanet(state: State) -> bool:
    return is_retinanet_like(state) and not retinanet_v2(state)


def retinanet_look_alike(state: State) -> str | None:
    return "retinanet_resnet50_fpn_v2" if is_retinanet_like(state) and retinanet_v2(state) else None


def convert_retinanet(state: State, source: str) -> tuple[ModelConfig, dict[str, Any]]:
    weights = rename_all(state, retinanet_key, source=source, model="retinanet_resnet50_fpn")
    config = retinanet_r50()
    # torchvision runs its COCO checkpoint with FrozenBatchNorm eps = 0 (overwrite_eps), as Faster R-CNN's.
    config.backbone.bn_eps = 0.0
    own_classes(config, weights, "head.cls_logits.weight", RETINANET_ANCHORS, source)
    return config, weights


RETINANET = TorchvisionLayout("retinanet_resnet50_fpn", is_retinanet, retinanet_look_alike, convert_retinanet)

#: Every torchvision detector layout this project loads, tried in order.
LAYOUTS: tuple[TorchvisionLayout, ...] = (FASTER_RCNN, RETINANET, FCOS)
