"""Loading and saving a detector: the project's checkpoints and torchvision's layout.

Two layouts are understood:

* the project's own checkpoints: ``{"format": "fpn", "config": {...}, "model": state_dict, ...}``;
  the config inside is enough to rebuild the model;
* torchvision ``fasterrcnn_resnet50_fpn`` state dicts (detected from their keys), converted on load.

(torchvision ImageNet ResNet state dicts are for the backbone: see :mod:`fpn.backbones`.) Reading is
weights-only and writing atomic, through :mod:`fpn.io`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fpn.config import ModelConfig, apply_overrides, from_dict, to_dict
from fpn.detection.faster_rcnn import FasterRCNN
from fpn.errors import CheckpointError
from fpn.io import atomic_save, load_matching, read_state_dict
from fpn.presets import r50_fpn

FORMAT = "fpn"


def _torchvision_key(key: str) -> str | None:
    """Our name for a torchvision ``fasterrcnn_resnet50_fpn`` key (its old and new module layouts), else None.

    Only the plain-conv layouts are accepted: ``inner_blocks.{i}[.0].{leaf}``, ``rpn.head.conv[.0.0].{leaf}``.
    The v2 model (norms inside these blocks: ``inner_blocks.{i}.1.*``) is a different architecture.
    """
    parts = key.split(".")
    if key.startswith("backbone.body."):
        return "backbone." + key[len("backbone.body.") :]
    if key.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")):
        if len(parts) == 5 or (len(parts) == 6 and parts[4] == "0"):
            index, leaf = int(parts[3]), parts[-1]
            if parts[2] == "inner_blocks":
                return f"pyramid.lateral.c{index + 2}.{leaf}"
            return f"pyramid.smooth.p{index + 2}.{leaf}"
        return None
    if key.startswith("rpn.head.conv."):
        if len(parts) == 4 or (len(parts) == 6 and parts[3:5] == ["0", "0"]):
            return f"rpn.head.conv.{parts[-1]}"
        return None
    if key.startswith(("rpn.head.", "roi_heads.box_head.fc", "roi_heads.box_predictor.")):
        return key
    return None


def is_torchvision_layout(state: Mapping[str, Any]) -> bool:
    return "backbone.body.conv1.weight" in state and any(k.startswith("backbone.fpn.") for k in state)


def convert_torchvision(state: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Rename a torchvision ``fasterrcnn_resnet50_fpn`` state dict to this project's module names."""
    out = {}
    for key, value in state.items():
        ours = _torchvision_key(key)
        if ours is None:
            raise CheckpointError(
                f"{source}: key {key!r} is not part of torchvision's fasterrcnn_resnet50_fpn "
                "(only that torchvision layout is supported)"
            )
        out[ours] = value
    return out


def save_detector(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write the project's checkpoint: config + weights (+ anything in ``extra``, e.g. optimizer state)."""
    if getattr(model, "optimized", False):
        raise ValueError("an inference-optimized model (folded BatchNorms) cannot be saved; save the original")
    payload = {"format": FORMAT, "version": 1, "config": to_dict(model.config), "model": model.state_dict()}
    payload.update(extra)
    return atomic_save(payload, path)


@dataclass
class DetectorCheckpoint:
    """A detector checkpoint read and recognised: its kind, the model config it describes, its weights.

    ``weights`` are in this project's module names whatever the file's layout; ``config`` is the
    architecture and the checkpoint's own classes (torchvision's COCO layout: COCO's 91 slots).
    """

    source: str
    kind: str  # "fpn" (the project's model.pt / last.pt) or "torchvision" (fasterrcnn_resnet50_fpn)
    config: dict[str, Any]
    weights: Mapping[str, Any]
    state: dict[str, Any]  # the whole file, for its other entries (iteration, metrics, ...)


def read_detector(source: str | os.PathLike) -> DetectorCheckpoint:
    """Read a detector checkpoint (weights-only) and recognise its layout, or refuse it in one line."""
    source = str(source)
    state = read_state_dict(source)
    if state.get("format") == FORMAT:
        if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), Mapping):
            raise CheckpointError(f"{source}: fpn checkpoint without 'config' and 'model' entries")
        return DetectorCheckpoint(source, "fpn", state["config"], state["model"], state)
    if is_torchvision_layout(state):
        weights = convert_torchvision(state, source=source)
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
        return DetectorCheckpoint(source, "torchvision", to_dict(config), weights, state)
    raise CheckpointError(f"{source}: neither an fpn checkpoint nor a torchvision fasterrcnn_resnet50_fpn state dict")


def load_detector(source: str | os.PathLike, *, config_overrides: list[str] | None = None):
    """Rebuild a detector from a checkpoint alone: the project's format, or torchvision's layout.

    Returns ``(model, checkpoint_dict)``; the model is on the CPU in eval mode.
    """
    checkpoint = read_detector(source)
    source, config_dict = checkpoint.source, checkpoint.config
    if config_overrides:
        config_dict = apply_overrides(copy.deepcopy(config_dict), list(config_overrides))
    config = from_dict(ModelConfig, config_dict, where=source)
    config.backbone.weights = None  # the checkpoint's weights replace any ImageNet initialisation
    model = FasterRCNN(config)
    what = f"the '{config.pyramid.design}' detector its config describes"
    load_matching(model, checkpoint.weights, source=source, what=what)
    return model.eval(), checkpoint.state
