"""Support for the real-size tier: torchvision's r50 checkpoint layout, photo-sized images, set comparison.

The weights are ``deterministic_state_dict`` of the COCO checkpoint's keys (tools/reference), written as the
``.pth`` file a user downloads from torchvision; the images are ``drawn_photos.PHOTO_SPECS``, drawn here bit
for bit as the reference venv drew them (their SHA-256 is checked against the golden's).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).parents[1]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tools" / "reference"))
from deterministic_weights import deterministic_state_dict  # noqa: E402
from drawn_photos import PHOTO_SPECS, draw_photo, photo_sha256  # noqa: E402

BOX_TOL = 0.01  # px, original image
SCORE_TOL = 1e-4


@functools.cache
def golden() -> dict:
    return torch.load(GOLDEN / "fasterrcnn_realsize.pt", weights_only=True)


@functools.cache
def photo(name: str) -> torch.Tensor:
    """``uint8 [3, H, W]``, checked against the hash the reference venv recorded."""
    image = draw_photo(*PHOTO_SPECS[name])
    assert photo_sha256(image) == golden()["metadata"]["images"][name]["sha256"], f"{name} drawn differently"
    return image


def photo_tensor(name: str) -> torch.Tensor:
    """The photo as ``fpn`` reads a PNG of it: float32 in 0..1."""
    return photo(name).float() / 255.0


def write_photos(folder: Path, names: list[str] | None = None) -> list[Path]:
    """The photos as PNG files (lossless, so reading them back gives the same pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(PHOTO_SPECS):
        path = folder / name
        Image.fromarray(photo(name).permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def write_torchvision_r50(path: Path) -> Path:
    """A ``fasterrcnn_resnet50_fpn`` COCO-layout state dict (295 keys, FrozenBatchNorm) with the goldens' weights."""
    keys = json.loads((GOLDEN / "fasterrcnn_resnet50_fpn_keys.json").read_text())["fasterrcnn_resnet50_fpn_frozen_bn"]
    torch.save(deterministic_state_dict({key: tuple(shape) for key, shape in keys}), path)
    return path


def assert_same_detections(ours: dict, theirs: dict, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL) -> None:
    """The same detections as a set: equal counts, each of ours matched one-to-one to one of theirs with the
    same label, its box within ``box_tol`` px and its score within ``score_tol``."""
    assert len(ours["boxes"]) == len(theirs["boxes"]), (len(ours["boxes"]), len(theirs["boxes"]))
    if not len(theirs["boxes"]):
        return
    distance = torch.cdist(ours["boxes"].double(), theirs["boxes"].double(), p=float("inf"))
    distance[ours["labels"][:, None] != theirs["labels"][None, :]] = float("inf")
    nearest = distance.min(dim=1)
    assert nearest.values.max() <= box_tol, f"a box is {float(nearest.values.max()):.4g} px from its match"
    assert nearest.indices.unique().numel() == len(theirs["boxes"]), "not a one-to-one match"
    score_diff = (ours["scores"].double() - theirs["scores"][nearest.indices].double()).abs().max()
    assert score_diff <= score_tol, f"scores differ by {float(score_diff):.3g}"
