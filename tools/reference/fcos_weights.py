"""FCOS's deterministic golden weights: ``deterministic_state_dict`` with the predictors arranged (torch only).

Plain deterministic weights give FCOS class logits of std ~0.6 around 0, so nearly every (location, class)
pair scores above the 0.2 threshold and the detections are a near-tie of thousands. Arranged as a trained
model's are (most pairs far below the threshold, a few far above), the goldens decide their detections by
clear margins: the class logits' weights are scaled by ``CLS_SCALE`` and shifted by ``CLS_BIAS`` (at 320 px
about 60-500 / 10-30 / 10 / 0-1 / 0 candidates on P3..P7; at 800 px 500-2000 on P3, so the 1000-per-level
cut acts there, on candidates far below the 100-detection cut's score), and the box codes by ``REG_SCALE`` and
``REG_BIAS`` (boxes of about two strides, so that NMS has overlaps to resolve).
Scaling by powers of two and adding a constant are exact float32 operations, so the reference venv and the
test suite get the same bits. Imported by ``make_fcos_goldens.py`` and the tests (``sys.path``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from deterministic_weights import deterministic_state_dict

CLS_SCALE, CLS_BIAS = 4.0, -11.5
REG_SCALE, REG_BIAS = 2.0, 1.0
CLS = "head.classification_head.cls_logits"
REG = "head.regression_head.bbox_reg"


def fcos_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Weights for torchvision's ``fcos_resnet50_fpn`` keys ``shapes`` (``{key: shape}``), arranged as above."""
    state = deterministic_state_dict(shapes)
    state[f"{CLS}.weight"] = state[f"{CLS}.weight"] * CLS_SCALE
    state[f"{CLS}.bias"] = state[f"{CLS}.bias"] + CLS_BIAS
    state[f"{REG}.weight"] = state[f"{REG}.weight"] * REG_SCALE
    state[f"{REG}.bias"] = state[f"{REG}.bias"] + REG_BIAS
    return state
