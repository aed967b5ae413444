"""Support for RetinaNet's torchvision parity tests: the goldens, and the weights written as torchvision's file.

``tools/reference/make_retinanet_goldens.py`` ran torchvision's ``retinanet_resnet50_fpn`` (v1, FrozenBatchNorm
eps 0) with :func:`retinanet_weights.retinanet_state_dict` weights on ``drawn_photos.PHOTO_SPECS`` (redrawn here
bit for bit: :func:`realsize.photo_tensor` checks their hashes). Here the same weights are written under
torchvision's key names (``tests/golden/retinanet_resnet50_fpn_keys.json``) as the ``.pth`` file a user
downloads, in the current ``conv.{i}.0`` head layout or the ``conv.{2i}`` one of torchvision's released file.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tools" / "reference"))
from retinanet_weights import retinanet_state_dict  # noqa: E402


@functools.cache
def golden() -> dict:
    return torch.load(GOLDEN / "retinanet_parity.pt", weights_only=True)


def torchvision_state(old_layout: bool = False) -> dict[str, torch.Tensor]:
    """The goldens' weights under torchvision's names; ``old_layout``: the subnets as ``conv.{2i}`` (the
    flat ``nn.Sequential`` of torchvision's released COCO file) instead of ``conv.{i}.0``."""
    keys = json.loads((GOLDEN / "retinanet_resnet50_fpn_keys.json").read_text())["retinanet_resnet50_fpn_frozen_bn"]
    state = retinanet_state_dict({key: tuple(shape) for key, shape in keys})
    if old_layout:
        pattern = re.compile(r"^(head\.\w+_head\.conv)\.(\d+)\.0\.")
        state = {pattern.sub(lambda m: f"{m[1]}.{2 * int(m[2])}.", key): value for key, value in state.items()}
    return state


def write_torchvision_retinanet(path: Path, old_layout: bool = False) -> Path:
    torch.save(torchvision_state(old_layout), path)
    return path
