"""Feature Pyramid Network object detection (Lin et al., CVPR 2017) in plain PyTorch.

The public API, one import away::

    import fpn

    model, checkpoint = fpn.load_detector("runs/mine/model.pt")  # or torchvision's fasterrcnn .pth
    for result in fpn.detect(model, ["photo.jpg"], score_thresh=0.5):
        for d in result.records:  # COCO [x, y, w, h] in the photo's pixels, and the pyramid level
            print(d["category"], d["score"], d["bbox"], d["level"])

    model = fpn.FasterRCNN(fpn.preset("tiny-fpn", design="hierarchy"))  # any preset, any design
    print(model.describe())  # levels, strides, channels, anchor sizes

Training and evaluation: ``fpn.train(run_config, "runs/x")`` (a :class:`fpn.engine.config.RunConfig`, as
``fpn train`` builds it) and ``fpn.evaluate(model, fpn.load_dataset("data.yaml", "val"))``.

Names are imported on first use, so ``import fpn`` stays cheap and ``import fpn.levels`` loads no detector.
"""

from __future__ import annotations

import importlib
from typing import Any

from fpn.version import __version__

# name -> module that defines it
_PUBLIC = {
    "FasterRCNN": "fpn.detection",
    "FCOS": "fpn.detection",
    "RetinaNet": "fpn.detection",
    "load_detector": "fpn.detection",
    "save_detector": "fpn.detection",
    "preset": "fpn.presets",
    "PRESETS": "fpn.presets",
    "ModelConfig": "fpn.config",
    "load_dataset": "fpn.data",
    "detect": "fpn.engine.inference",
    "train": "fpn.engine.train",
    "evaluate": "fpn.engine.evaluate",
    "FpnError": "fpn.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fpn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
