"""Run a detector on image files: the library side of ``fpn detect``.

Results use the original image's pixels and COCO's box convention (``[x, y, width, height]``), one record
per detection: ``{"file_name", "bbox", "score", "category_id", "category", "level"}``, where ``level`` is
the pyramid level (``"p3"``) whose RoI produced the box.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fpn.data.images import open_image, pil_to_tensor
from fpn.detection import FasterRCNN
from fpn.errors import DataError

log = logging.getLogger(__name__)


def to_records(file_name: str, detections: dict[str, torch.Tensor], model: FasterRCNN) -> list[dict]:
    """One JSON-ready record per detection, in COCO's ``[x, y, w, h]`` convention."""
    config = model.config
    records = []
    for box, score, label, level in zip(
        detections["boxes"].tolist(),
        detections["scores"].tolist(),
        detections["labels"].tolist(),
        detections["levels"].tolist(),
    ):
        x1, y1, x2, y2 = box
        records.append(
            {
                "file_name": file_name,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(score, 5),
                "category_id": config.category_id(int(label)),
                "category": config.class_names[int(label) - 1],
                "level": f"p{int(level)}",
            }
        )
    return records


@dataclass
class DetectResult:
    path: Path
    detections: dict[str, torch.Tensor] | None = None  # on the CPU, original pixels
    image: object = None  # the RGB Pillow image, for drawing
    error: str | None = None
    records: list[dict] = field(default_factory=list)


@torch.inference_mode()
def detect_files(
    model: FasterRCNN,
    paths: Iterable[Path],
    *,
    device: torch.device,
    score_thresh: float | None = None,
    dtype: torch.dtype = torch.float32,
    winograd: bool = True,
) -> Iterator[DetectResult]:
    """Detections for each image file; an unreadable image yields a result with ``error`` set instead.

    The model is put in eval mode on ``device`` and optimized for inference in place, in ``dtype`` and with or
    without Winograd convolutions (see :meth:`FasterRCNN.optimize_for_inference`): reload it to train or save
    it afterwards.
    """
    model.eval().to(device)
    if not model.optimized:
        # float32: the same detections to float rounding, faster; bfloat16: faster still, close but not equal.
        model.optimize_for_inference(dtype, winograd=winograd)
    for path in paths:
        try:
            image = open_image(path)
        except DataError as exc:
            yield DetectResult(path, error=str(exc))
            continue
        out = model([pil_to_tensor(image).to(device)])[0]
        out = {k: v.cpu() for k, v in out.items()}
        if score_thresh is not None:
            keep = out["scores"] >= score_thresh
            out = {k: v[keep] for k, v in out.items()}
        yield DetectResult(path, out, image, records=to_records(path.name, out, model))
