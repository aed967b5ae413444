"""One detector from its config: ``config.detector`` names the head over the pyramid's levels.

Construction is plain Python: each name maps to a class, and every class takes the whole
:class:`~fpn.config.ModelConfig`. Code that builds "whatever this config describes" (training, loading a
checkpoint, ``fpn bench``) calls :func:`build_detector`; code that knows what it wants calls the class.
"""

from __future__ import annotations

from fpn.config import ModelConfig
from fpn.detection.base import PyramidDetector
from fpn.detection.faster_rcnn import FasterRCNN
from fpn.detection.fcos import FCOS
from fpn.detection.retinanet import RetinaNet
from fpn.errors import ConfigError

#: ``config.detector`` -> the class that builds it.
DETECTOR_CLASSES: dict[str, type[PyramidDetector]] = {"faster-rcnn": FasterRCNN, "retinanet": RetinaNet, "fcos": FCOS}


def build_detector(config: ModelConfig) -> PyramidDetector:
    """The detector ``config.detector`` describes (``faster-rcnn``, ``retinanet`` or ``fcos``), untrained."""
    cls = DETECTOR_CLASSES.get(config.detector)
    if cls is None:
        raise ConfigError(f"detector must be one of {', '.join(DETECTOR_CLASSES)}; got {config.detector!r}")
    return cls(config)
