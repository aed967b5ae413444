"""End to end: RetinaNet learns two drawn scenes, from scratch (tiny-retinanet) and from a torchvision-layout
``retinanet_resnet50_fpn`` checkpoint (fine-tuned onto the scenes' three classes).

The scenes and the scoring are test_overfit.py's (Faster R-CNN's): the loss falls by a large factor and the
trained model, in eval mode, finds the training objects with the right class.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from detection.test_overfit import CLASSES, dataset, matches

from fpn.detection import RetinaNet
from fpn.detection.finetune import checkpoint_model_config, init_from_checkpoint
from fpn.presets import preset

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "tools" / "reference"))
from retinanet_weights import retinanet_state_dict  # noqa: E402


def fit(model: RetinaNet, steps: int, lr: float, warmup: int = 20) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    images, targets = dataset()
    history = []
    model.train()
    for _ in range(steps):
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
    return history


def check(history: list[float], model: RetinaNet, what: str, factor: float, recall: float) -> None:
    initial, final = sum(history[:3]) / 3, sum(history[-10:]) / 10
    assert all(torch.isfinite(torch.tensor(history)))
    assert final < factor * initial, f"{what}: loss {initial:.3f} -> {final:.3f} after {len(history)} steps"
    report = matches(model)
    hits = sum(line.startswith("hit") for line in report)
    assert hits / len(report) >= recall, f"{what}: recall {hits}/{len(report)}:\n" + "\n".join(report)
    print(f"{what}: loss {initial:.3f} -> {final:.3f}, {hits}/{len(report)} found")


@pytest.mark.slow
def test_tiny_retinanet_overfits_two_images():
    torch.manual_seed(0)
    config = preset("tiny-retinanet")
    config.class_names = list(CLASSES)
    config.transform.min_size, config.transform.max_size = [128], 128
    model = RetinaNet(config)
    history = fit(model, steps=150, lr=0.01)
    with torch.no_grad():
        levels = torch.cat([d["levels"] for d in model.eval()(dataset()[0])])
    assert set(levels.tolist()) <= {3, 4, 5, 6, 7} and len(levels)
    check(history, model, "tiny-retinanet", factor=0.3, recall=0.8)


@pytest.mark.slow
def test_retinanet_from_a_torchvision_checkpoint_overfits_two_images(tmp_path):
    """torchvision's layout (old ``conv.{2i}`` head names, as its released file has them) -> our classes."""
    keys = json.loads((ROOT / "tests" / "golden" / "retinanet_resnet50_fpn_keys.json").read_text())
    state = retinanet_state_dict({key: tuple(shape) for key, shape in keys["retinanet_resnet50_fpn_frozen_bn"]})
    path = tmp_path / "retinanet_resnet50_fpn_coco.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    config = checkpoint_model_config(path)
    config.class_names = list(CLASSES)
    config.transform.min_size, config.transform.max_size = [128], 128
    model = RetinaNet(config)
    report = init_from_checkpoint(model, path)
    assert report.kind == "torchvision" and report.new == list(CLASSES)  # no COCO class is named so
    history = fit(model, steps=60, lr=0.005)
    check(history, model, "retinanet-r50 from torchvision's layout", factor=0.5, recall=0.5)
