"""A scripted stand-in detector and prepared outputs for evaluation tests (imported as a top-level module)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fpn.config import ModelConfig


class Scripted(nn.Module):
    """A stand-in detector that returns prepared outputs, one per image in dataset order."""

    def __init__(self, class_names: list[str], outputs: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.config = ModelConfig(class_names=list(class_names))
        self.outputs = list(outputs)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        assert not self.training
        return [self.outputs.pop(0) for _ in images]


def output(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, levels: torch.Tensor | None = None) -> dict:
    levels = levels if levels is not None else torch.full((len(boxes),), 3)
    return {"boxes": boxes.float(), "scores": scores.float(), "labels": labels.long(), "levels": levels.long()}


def perfect_outputs(dataset, label_of=lambda label: label) -> list[dict]:
    outputs = []
    for i in range(len(dataset)):
        target = dataset.target(i)
        n = len(target["boxes"])
        labels = torch.tensor([label_of(int(lb)) for lb in target["labels"]])
        outputs.append(output(target["boxes"], torch.ones(n), labels, torch.arange(n) % 4 + 2))
    return outputs


def noisy_outputs(dataset, seed: int = 0) -> list[dict]:
    """Jittered ground truth, some wrong labels and some false positives, with random scores."""
    g = torch.Generator().manual_seed(seed)
    outputs = []
    for i in range(len(dataset)):
        target = dataset.target(i)
        boxes = target["boxes"] + torch.randn(target["boxes"].shape, generator=g) * 3
        labels = target["labels"].clone()
        flip = torch.rand(len(labels), generator=g) < 0.2
        labels[flip] = labels[flip] % dataset.num_classes + 1
        extra = torch.rand(4, 2, generator=g) * 120
        extra = torch.cat([extra, extra + 8 + torch.rand(4, 2, generator=g) * 30], dim=1)
        boxes = torch.cat([boxes, extra]).clamp(0, 160)
        labels = torch.cat([labels, torch.randint(1, dataset.num_classes + 1, (4,), generator=g)])
        scores = torch.rand(len(boxes), generator=g)
        outputs.append(output(boxes, scores, labels, torch.randint(2, 6, (len(boxes),), generator=g)))
    return outputs


def pycocotools_stats(
    ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], cat_ids: Sequence[int] | None = None
) -> np.ndarray:
    """pycocotools' own 12 numbers (0-1, -1 for an empty bucket) for ``detections``, computed here without
    fpn's evaluation code; ``cat_ids``: for those categories alone."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes([{k: v for k, v in d.items() if k != "level"} for d in detections])
        evaluator = COCOeval(gt, dt, iouType="bbox")
        if cat_ids is not None:
            evaluator.params.catIds = list(cat_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats
