"""Loading and saving a detector: the project's checkpoints and torchvision's layout.

Two kinds of file are understood:

* the project's own checkpoints: ``{"format": "fpn", "config": {...}, "model": state_dict, ...}``;
  the config inside is enough to rebuild the model;
* torchvision detectors' state dicts (:data:`fpn.detection.torchvision_layouts.LAYOUTS`, recognised from their
  keys), converted on load; also inside the wrappers frameworks save them in (a Lightning checkpoint's
  ``state_dict``, a ``model.`` prefix, a ``.safetensors`` file): see :func:`unwrap`.

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
from fpn.detection.build import build_detector
from fpn.detection.torchvision_layouts import LAYOUTS
from fpn.errors import CheckpointError
from fpn.io import atomic_save, load_matching, read_state_dict

FORMAT = "fpn"


def unwrap(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The detector's state dict inside a wrapper, as frameworks built on torchvision save it.

    A Lightning checkpoint's ``state_dict``; a ``{"model": state_dict}`` file (Detectron2 style, and many
    training scripts); keys prefixed by the attribute that held the model (``model.``, ``module.`` from DDP,
    ``detector.``), stripped one component at a time while every key shares it and no layout is recognised.
    """
    for entry in ("state_dict", "model"):
        inner = state.get(entry)
        if isinstance(inner, Mapping) and state.get("format") != FORMAT and inner:
            state = inner
            break
    while state and not _recognised(state):
        heads = {key.split(".", 1)[0] for key in state}
        if len(heads) != 1 or any("." not in key for key in state):
            break
        head = next(iter(heads)) + "."
        state = {key[len(head) :]: value for key, value in state.items()}
    return state


def _recognised(state: Mapping[str, Any]) -> bool:
    return state.get("format") == FORMAT or any(layout.recognise(state) for layout in LAYOUTS)


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
    kind: str  # "fpn" (the project's model.pt / last.pt) or "torchvision" (one of its detectors' layouts)
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
    weights = unwrap(state)
    for layout in LAYOUTS:
        look_alike = layout.refuse(weights)
        if look_alike is not None:
            raise CheckpointError(f"{source}: torchvision's {look_alike} is not supported (only {layout.name})")
        if layout.recognise(weights):
            config, weights = layout.convert(weights, source)
            return DetectorCheckpoint(source, "torchvision", to_dict(config), weights, state)
    known = ", ".join(layout.name for layout in LAYOUTS)
    raise CheckpointError(f"{source}: neither an fpn checkpoint nor a torchvision state dict ({known})")


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
    model = build_detector(config)
    what = f"the '{config.pyramid.design}' {config.detector} detector its config describes"
    load_matching(model, checkpoint.weights, source=source, what=what)
    return model.eval(), checkpoint.state
