"""End to end: a tiny detector trained from scratch on two drawn images learns to find their objects.

This is the test that the pieces (anchors, matching, sampling, losses, box coding, RoI pooling, postprocessing)
fit together into something that learns: the loss falls by a large factor and the trained model, in eval mode,
finds every training object with the right class.
"""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image, ImageDraw

from fpn.data.images import pil_to_tensor
from fpn.detection import FasterRCNN
from fpn.ops import box_iou
from fpn.presets import preset

CLASSES = ["square", "disc", "triangle"]
# Two 128 x 128 scenes, three objects each: (class, (x1, y1, x2, y2)).
SCENES = [
    [("square", (12, 14, 52, 50)), ("disc", (70, 60, 116, 108)), ("triangle", (20, 76, 60, 118))],
    [("disc", (8, 8, 48, 44)), ("triangle", (64, 12, 116, 60)), ("square", (40, 70, 90, 116))],
]
COLOURS = {"square": (230, 60, 40), "disc": (40, 200, 60), "triangle": (50, 80, 230)}


def draw(scene) -> Image.Image:
    image = Image.new("RGB", (128, 128), (90, 90, 90))
    pen = ImageDraw.Draw(image)
    for name, (x1, y1, x2, y2) in scene:
        if name == "square":
            pen.rectangle((x1, y1, x2 - 1, y2 - 1), fill=COLOURS[name])
        elif name == "disc":
            pen.ellipse((x1, y1, x2 - 1, y2 - 1), fill=COLOURS[name])
        else:
            pen.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=COLOURS[name])
    return image


def dataset() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [pil_to_tensor(draw(scene)) for scene in SCENES]
    targets = [
        {
            "boxes": torch.tensor([box for _, box in scene], dtype=torch.float32),
            "labels": torch.tensor([CLASSES.index(name) + 1 for name, _ in scene]),
        }
        for scene in SCENES
    ]
    return images, targets


def train(design: str, steps: int, lr: float, warmup: int = 20) -> tuple[FasterRCNN, list[float]]:
    torch.manual_seed(0)
    config = preset("tiny-fpn", design=design)
    config.class_names = list(CLASSES)
    config.transform.min_size = [128]
    config.transform.max_size = 128
    model = FasterRCNN(config)
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
        optimizer.step()
        schedule.step()
        history.append(loss.item())
    return model, history


def matches(model: FasterRCNN) -> list[str]:
    """For each ground-truth box, a description of its best detection of the right class, or of the miss."""
    images, targets = dataset()
    model.eval()
    with torch.no_grad():
        results = model(images)
    report = []
    for i, (result, target) in enumerate(zip(results, targets)):
        for box, label in zip(target["boxes"], target["labels"]):
            same = (result["labels"] == label) & (result["scores"] >= 0.5)
            if not same.any():
                report.append(f"miss: image {i} {CLASSES[label - 1]} (no detection of that class with score >= 0.5)")
                continue
            iou = box_iou(box[None], result["boxes"][same])[0]
            best = int(iou.argmax())
            score = float(result["scores"][same][best])
            found = "hit" if iou[best] >= 0.5 else "miss"
            report.append(f"{found}: image {i} {CLASSES[label - 1]} IoU {iou[best]:.2f} score {score:.2f}")
    return report


@pytest.mark.slow
@pytest.mark.parametrize(
    ("design", "steps", "lr"),
    [
        # Measured on 2 quiet CPU cores: ~0.13 s/step for fpn, ~0.1 s/step for single-map. With torch seeds 0, 1
        # and 2 the loss ends at 0.05-0.1x its start and every object is found (IoU >= 0.6, score >= 0.9); with
        # 120 steps single-map's worst IoU was 0.59, hence 150.
        ("fpn", 150, 0.03),
        ("single-map", 150, 0.03),
    ],
)
def test_tiny_detector_overfits_two_images(design, steps, lr):
    start = time.perf_counter()
    model, history = train(design, steps, lr)
    initial = sum(history[:3]) / 3
    final = sum(history[-10:]) / 10
    assert all(torch.isfinite(torch.tensor(history)))
    assert final < 0.3 * initial, f"{design}: loss {initial:.3f} -> {final:.3f} after {steps} steps"
    report = matches(model)
    hits = sum(line.startswith("hit") for line in report)
    assert hits / len(report) >= 0.8, f"{design}: recall {hits}/{len(report)}:\n" + "\n".join(report)
    print(
        f"{design}: loss {initial:.3f} -> {final:.3f}, {hits}/{len(report)} found, {time.perf_counter() - start:.1f}s"
    )
