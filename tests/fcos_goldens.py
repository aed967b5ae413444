"""torchvision's FCOS goldens (tools/reference/make_fcos_goldens.py): their weights as a torchvision-layout file.

The weights are not stored: ``fcos_weights.fcos_state_dict`` rebuilds them bit for bit from the key list the
golden records (torchvision's ``fcos_resnet50_fpn`` keys, FrozenBatchNorm: no ``num_batches_tracked``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tools" / "reference"))
from fcos_weights import fcos_state_dict  # noqa: E402


@functools.cache
def golden(name: str) -> dict:
    """``fcos_parity`` (320 px, fast tier) or ``fcos_realsize`` (800 px, real tier)."""
    return torch.load(GOLDEN / f"{name}.pt", weights_only=True)


def torchvision_fcos_state() -> dict[str, torch.Tensor]:
    keys = golden("fcos_parity")["metadata"]["keys"]
    return fcos_state_dict({key: tuple(shape) for key, shape in keys})


def write_torchvision_fcos(path: Path) -> Path:
    """The goldens' weights as the ``.pth`` torchvision's ``fcos_resnet50_fpn`` state dict would be."""
    torch.save(torchvision_fcos_state(), path)
    return path
