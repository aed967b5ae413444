"""Fine-tuning: start a detector from a detection checkpoint trained on other classes (``fpn train --weights``).

What a user has is a checkpoint trained on some classes: torchvision's COCO ``fasterrcnn_resnet50_fpn``, or a
run of their own (``model.pt``, ``last.pt``). What they train has its own classes, and maybe settings that
change a layer's shape. :func:`init_from_checkpoint` loads every tensor whose name and shape fit and treats
the class-specific layers (the box predictor's ``cls_score`` and ``bbox_pred``, whose rows are classes) by
class *name*: a class both sets share keeps its rows, moved to its new label; a new class keeps the model's
fresh initialisation; the checkpoint's other classes are dropped. Nothing is skipped silently: whatever the
checkpoint holds that does not fit is left out and counted, and :meth:`InitReport.summary` says in one line
what was loaded, re-made and left out.

Each detector names its class-specific tensors and their row layout (``model.class_layers()``, a
:class:`~fpn.detection.base.ClassRows` each). In Faster R-CNN's box predictor ``cls_score`` row 0 is
background and row ``k + 1`` is class ``k``; ``bbox_pred`` has four rows per class, ``4(k+1) .. 4(k+1)+3``.
Background's rows are carried over too: its logit was trained against every class's and is as shared as the
box head. A one-stage classifier has no background slot, and RetinaNet's has one block of classes per anchor.

:func:`checkpoint_model_config` is the architecture a fine-tuning run takes: the checkpoint's own config, or
for torchvision's layout the ``r50-fpn`` preset with frozen BatchNorm of eps 0, as
:func:`~fpn.detection.checkpoint.load_detector` runs it; the backbone's norm and frozen stages come with it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fpn.config import ModelConfig, from_dict
from fpn.detection.base import ClassRows
from fpn.detection.checkpoint import DetectorCheckpoint, read_detector
from fpn.detection.classes import fold_name, is_placeholder
from fpn.errors import CheckpointError

SHOWN = 3  # names listed in the summary line before "..."

Source = str | os.PathLike | DetectorCheckpoint


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did, tensor by tensor and class by class."""

    source: str
    kind: str  # the checkpoint's layout: "fpn" or "torchvision"
    offered: int  # the checkpoint's tensors
    loaded: list[str] = field(default_factory=list)  # loaded as they are
    left_out: dict[str, str] = field(default_factory=dict)  # the checkpoint's tensors not used, and why
    fresh: list[str] = field(default_factory=list)  # the model's tensors the checkpoint has nothing for
    same_classes: bool = False  # the same class names in the same order: the class layers loaded as they are
    carried: list[str] = field(default_factory=list)  # the run's classes whose rows came from the checkpoint
    new: list[str] = field(default_factory=list)  # the run's classes with freshly initialised rows
    dropped: int = 0  # the checkpoint's (real) classes the run does not have
    class_layers: str = "the class layers"  # their names, shortened, for the summary line

    def summary(self) -> str:
        """One line: ``--weights W: loaded N of M tensors; re-made ... for 1 new class (c), carried over 1 (b);
        left out: none``."""
        parts = [f"--weights {self.source}: loaded {len(self.loaded)} of {self.offered} tensors"]
        if self.same_classes:
            parts.append(f"kept {self.class_layers} (the same {len(self.carried)} classes)")
        else:
            made = f"re-made {self.class_layers} for {_count(len(self.new), 'new class', 'new classes')}"
            made += _names(self.new)
            made += f", carried over {len(self.carried)}{_names(self.carried)}"
            if self.dropped:
                made += f", dropped {self.dropped} of the checkpoint's"
            parts.append(made)
        left = [f"{name} ({why})" for name, why in self.left_out.items()]
        parts.append(f"left out: {len(left)} ({_listing(left)})" if left else "left out: none")
        if self.fresh:
            parts.append(f"not in the checkpoint, initialised fresh: {len(self.fresh)} ({_listing(self.fresh)})")
        return "; ".join(parts)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def _names(names: Sequence[str]) -> str:
    return f" ({_listing(names)})" if names else ""


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _read(source: Source) -> DetectorCheckpoint:
    return source if isinstance(source, DetectorCheckpoint) else read_detector(source)


def checkpoint_model_config(source: Source) -> ModelConfig:
    """The architecture a run fine-tuned from ``source`` takes (with the checkpoint's classes until the
    data's replace them); no ImageNet backbone weights, since the checkpoint's replace them."""
    checkpoint = _read(source)
    config = from_dict(ModelConfig, checkpoint.config, where=checkpoint.source)
    config.backbone.weights = None
    return config


def class_sources(old: Sequence[str], new: Sequence[str]) -> list[int | None]:
    """For each class of ``new``, the index of the same class in ``old`` (by exact name, else ignoring case
    and ``_`` against spaces, when that is unambiguous), or None. Placeholder slots match nothing."""
    exact: dict[str, int] = {}
    for index, name in enumerate(old):
        if not is_placeholder(name):
            exact.setdefault(name, index)
    counts = Counter(fold_name(name) for name in exact)
    folded = {fold_name(name): index for name, index in exact.items() if counts[fold_name(name)] == 1}
    return [exact.get(name, folded.get(fold_name(name))) for name in new]


def init_from_checkpoint(model: nn.Module, source: Source, class_names: Sequence[str] | None = None) -> InitReport:
    """Load into ``model`` every tensor of the detection checkpoint ``source`` whose name and shape fit, the
    class layers' rows remapped by class name (``class_names``: the model's, by default).

    Deterministic: the rows of new classes are the model's own initialisation, so processes that built the
    model from the same seed and load the same file hold the same weights. Raises a one-line
    :class:`~fpn.errors.CheckpointError` naming the file when it cannot be read or no tensor fits.
    """
    checkpoint = _read(source)
    names = list(class_names if class_names is not None else model.config.class_names)
    old_names = list(checkpoint.config.get("class_names") or [])
    own = model.state_dict()
    offered = {}
    layers = model.class_layers()
    report = InitReport(checkpoint.source, checkpoint.kind, 0, class_layers=_short(layers))
    for key, value in checkpoint.weights.items():
        if key.endswith("num_batches_tracked") and key not in own:
            continue  # BatchNorm's counter: frozen BatchNorm has none, and it is no weight
        if not isinstance(value, torch.Tensor):
            report.left_out[key] = "not a tensor"
            continue
        offered[key] = value
    report.offered = len(offered) + len(report.left_out)
    report.same_classes = names == old_names
    state = dict(own)
    for key, value in offered.items():
        if key in layers and not report.same_classes:
            continue
        if key not in own:
            report.left_out[key] = "not in the model"
        elif value.shape != own[key].shape:
            report.left_out[key] = f"shape {_shape(value)}, the model's {_shape(own[key])}"
        else:
            state[key] = value
            report.loaded.append(key)
    if not report.loaded:
        design = getattr(getattr(model, "config", None), "pyramid", None)
        what = f"the '{design.design}' detector to train" if design is not None else "the model"
        raise CheckpointError(
            f"{checkpoint.source}: no tensor fits {what} (none of its {report.offered} has a name and shape of it)"
        )
    if report.same_classes:
        report.carried = list(names)
    else:
        _remap_classes(report, layers, state, own, offered, old_names, names)
    report.fresh = [key for key in own if key not in offered and key not in layers]
    model.load_state_dict(state, strict=True)
    return report


def _short(layers: dict[str, ClassRows]) -> str:
    """``roi_heads.box_predictor.cls_score/bbox_pred``: the class layers' module names, common prefix once."""
    modules = list(dict.fromkeys(key.rpartition(".")[0] for key in layers))
    prefix = modules[0].rpartition(".")[0] if modules else ""
    if prefix and all(m.rpartition(".")[0] == prefix for m in modules):
        return prefix + "." + "/".join(m.rpartition(".")[2] for m in modules)
    return "/".join(modules)


def _remap_classes(
    report: InitReport,
    layers: dict[str, ClassRows],
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    offered: dict[str, torch.Tensor],
    old_names: list[str],
    names: list[str],
) -> None:
    """Carry the shared classes' rows (and background's) into their new places; new classes keep their
    fresh rows. Class layers whose shape does not fit the checkpoint's class count are left out whole."""
    sources = class_sources(old_names, names)
    fits = all(
        key in offered
        and offered[key].shape[1:] == own[key].shape[1:]
        and offered[key].shape[0] == layout.size(len(old_names))
        for key, layout in layers.items()
    )
    if not fits:
        for key in layers:
            if key in offered:
                report.left_out[key] = f"shape {_shape(offered[key])} does not fit {_shape(own[key])}"
        report.new = list(names)
        return
    for key, layout in layers.items():
        bg = int(layout.background)
        pairs = [(0, 0)] * bg + [(k + bg, j + bg) for k, j in enumerate(sources) if j is not None]
        merged = own[key].detach().clone()
        for group in range(layout.groups):
            for to, of in pairs:
                merged[layout.index(group, to, len(names))] = offered[key][layout.index(group, of, len(old_names))]
        state[key] = merged
    report.carried = [name for name, j in zip(names, sources, strict=True) if j is not None]
    report.new = [name for name, j in zip(names, sources, strict=True) if j is None]
    used = {j for j in sources if j is not None}
    report.dropped = sum(1 for i, name in enumerate(old_names) if i not in used and not is_placeholder(name))
