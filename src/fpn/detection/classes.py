"""Which of a model's labels a user sees: never a placeholder slot, and only the classes asked for.

torchvision's COCO models (the ``r50-fpn`` preset and its checkpoint) have an output for every COCO category
id from 1 to 90, so that label ``i`` is category id ``i``; COCO uses only 80 of those ids, and the other ten
slots are named :data:`PLACEHOLDER` (``"N/A"``). No training image ever has an object of such a class, so a
trained COCO model only ever learns to score it low: a detection in that slot says nothing about the image,
whatever its score. Such detections are dropped before they reach a JSON file, a picture or a table, and a
class filter cannot select one.

A class filter (``fpn detect --classes``) names classes or gives the model's category ids:
:func:`select_labels` turns either into labels and refuses, in one line listing the model's classes, a
name or id the model does not have.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from fpn.config import ModelConfig
from fpn.errors import ConfigError

PLACEHOLDER = "N/A"


def is_placeholder(name: str) -> bool:
    return name == PLACEHOLDER


def real_classes(names: Sequence[str]) -> list[str]:
    """The class names without placeholder slots: what a model can actually detect."""
    return [name for name in names if not is_placeholder(name)]


def fold_name(name: str) -> str:
    """A name as a user may type it: ``Traffic_Light`` finds ``traffic light``."""
    return " ".join(name.replace("_", " ").casefold().split())


def _listing(config: ModelConfig) -> str:
    return ", ".join(real_classes(config.class_names))


def select_labels(config: ModelConfig, classes: Iterable[str | int], *, what: str = "classes") -> list[int]:
    """The labels (1-based) of ``classes``: class names, or the model's category ids (ints or digit strings).

    A name is matched exactly, else ignoring case and ``_`` against spaces; a token that is a class name is a
    name even if it is made of digits. ``what`` names the source in errors (``"--classes"``).
    """
    real = [(label, name) for label, name in enumerate(config.class_names, start=1) if not is_placeholder(name)]
    exact = {name: label for label, name in real}
    counts = Counter(fold_name(name) for _, name in real)
    folded = {fold_name(name): label for label, name in real if counts[fold_name(name)] == 1}  # only unambiguous ones
    by_id = {config.category_id(label): label for label, _ in real}
    labels = []
    for token in classes:
        label = _label(token, exact, folded, by_id)
        if label is None:
            raise ConfigError(_unknown(config, token, what))
        if label not in labels:
            labels.append(label)
    if not labels:
        raise ConfigError(f"{what}: no class given (the model's classes: {_listing(config)})")
    return labels


def _label(token: str | int, exact: dict, folded: dict, by_id: dict) -> int | None:
    """One token's label, or None when the model has no such (real) class."""
    if isinstance(token, int) and not isinstance(token, bool):
        return by_id.get(token)
    text = str(token).strip()
    if text in exact:
        return exact[text]
    if fold_name(text) in folded:
        return folded[fold_name(text)]
    return by_id.get(int(text)) if text.isdigit() else None


def _unknown(config: ModelConfig, token: str | int, what: str) -> str:
    """The one-line refusal of a token: a placeholder slot says so; any other lists the model's classes."""
    text = str(token).strip()
    slots = {config.category_id(label) for label, name in enumerate(config.class_names, 1) if is_placeholder(name)}
    if is_placeholder(text) or (text.isdigit() and int(text) in slots):
        return f"{what}: {text!r} is an unused slot of the model's label layout ({PLACEHOLDER}), not a class"
    kind = "category id" if text.isdigit() else "class"
    return f"{what}: the model has no {kind} {text!r}; its classes: {_listing(config)}"


def label_mask(
    config: ModelConfig, classes: Iterable[str | int] | None = None, *, what: str = "classes"
) -> torch.Tensor:
    """``[num_classes]`` booleans indexed by label: True where detections reach the user (background and
    placeholders never; with ``classes``, only those: see :func:`select_labels`)."""
    mask = torch.zeros(config.num_classes, dtype=torch.bool)
    if classes is None:
        mask[1:] = torch.tensor([not is_placeholder(name) for name in config.class_names], dtype=torch.bool)
    else:
        mask[select_labels(config, classes, what=what)] = True
    return mask


def keep_labels(detections: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``detections`` (``boxes``, ``scores``, ``labels``, ...) without those whose label ``mask`` refuses."""
    keep = mask.to(detections["labels"].device)[detections["labels"]]
    return {key: value[keep] for key, value in detections.items()}
