"""Deterministic weights for RetinaNet goldens that give real detections on every level (torch only).

``deterministic_state_dict`` alone gives RetinaNet logits of std ~0.1 on every anchor and class: all 5
million scores of a 320 px image near 0.5, the per-level top-k cut deciding everything, and the finest level
(most cells, so the largest extremes) winning every detection. :func:`retinanet_state_dict` rescales a few
tensors of it, elementwise by float constants (correctly rounded, so bit-identical in the reference venv and
the test suite):

* the FPN's P4 / P5 outputs and P6 / P7 are scaled up (``LEVEL_GAIN``): coarse maps have fewer cells, so
  their scores need a wider spread to reach the top as often as the finest level's;
* the classifier's weights are scaled by ``LOGIT_GAIN`` and its bias shifted by ``LOGIT_SHIFT``: a few hundred
  anchors per level score above torchvision's 0.05 threshold, the rest far below it (as a trained model's
  prior does).

Keys are torchvision's (``retinanet_resnet50_fpn``, its current ``conv.{i}.0`` head layout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from deterministic_weights import deterministic_state_dict

LEVEL_GAIN: dict[str, float] = {
    "backbone.fpn.layer_blocks.1.0.": 1.4,  # P4
    "backbone.fpn.layer_blocks.2.0.": 2.8,  # P5 (and P6, P7 computed from it)
    "backbone.fpn.extra_blocks.p6.": 0.9,
    "backbone.fpn.extra_blocks.p7.": 2.1,
}
LOGIT_GAIN = 16.0
LOGIT_SHIFT = -12.0
CLS_LOGITS = "head.classification_head.cls_logits."


def retinanet_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """``deterministic_state_dict(shapes)`` with the rescaling above (keys absent from ``shapes`` are skipped)."""
    state = deterministic_state_dict(shapes)
    for prefix, gain in LEVEL_GAIN.items():
        for leaf in ("weight", "bias"):
            if prefix + leaf in state:
                state[prefix + leaf] = state[prefix + leaf] * gain
    if CLS_LOGITS + "weight" in state:
        state[CLS_LOGITS + "weight"] = state[CLS_LOGITS + "weight"] * LOGIT_GAIN
        state[CLS_LOGITS + "bias"] = state[CLS_LOGITS + "bias"] + LOGIT_SHIFT
    return state
