"""What the exported file computes, and how a detector plugs into export.

``ExportGraph(model)`` is the whole model as one module that the tracer turns into the ONNX graph::

    images [N, 3, H, W] float32 RGB 0..1
      -> Preprocess (normalise, resize, pad: fpn.export.preprocess)
      -> the detector's graph (backbone, pyramid, heads, decoding, per-level top-k, NMS)
      -> boxes back to the input's pixels
    -> boxes [D, 4] float32 xyxy, scores [D] float32, labels [D] int64 (1..K), levels [D] int64 (k of p_k),
       batch_index [D] int64 (the image of each detection; image-major, each image's by decreasing score)

A detector kind plugs in through :data:`GRAPHS`: a function from the detector to an ``nn.Module`` whose
``forward(batch, resized)`` takes the padded, normalised batch ``[N, 3, Hp, Wp]`` and the resized images'
(h, w) (int64 ``[2]``, every image of a batch has one size) and returns the five tensors above in
resized-image pixels, traceable with any shape (the pieces of :mod:`fpn.export.ops`). The detector itself
must provide ``transform`` (a :class:`~fpn.detection.transform.DetectionTransform`), ``features(batch)``
and ``config`` (a :class:`~fpn.config.ModelConfig`: class names, category ids, thresholds).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from fpn.errors import ConfigError
from fpn.export.one_stage import FCOSGraph, RetinaNetGraph
from fpn.export.preprocess import Preprocess, to_original
from fpn.export.two_stage import TwoStageGraph

#: Detector kind (``model.detector`` in the config; Faster R-CNN where the key is absent) -> its graph.
GRAPHS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "faster-rcnn": TwoStageGraph,
    "fcos": FCOSGraph,
    "retinanet": RetinaNetGraph,
}

OUTPUTS = ("boxes", "scores", "labels", "levels", "batch_index")


def detector_kind(model: nn.Module) -> str:
    return str(getattr(model.config, "detector", "faster-rcnn") or "faster-rcnn")


def check_exportable(model: nn.Module) -> None:
    """Refuse, in one line, a model the graph cannot hold."""
    kind = detector_kind(model)
    if kind not in GRAPHS:
        raise ConfigError(f"export: the {kind!r} detector has no export graph yet (exportable: {', '.join(GRAPHS)})")
    if model.config.pyramid.design == "image-pyramid":
        raise ConfigError(
            "export: an image-pyramid model runs its detector at several scales and merges the results in Python; "
            "export its single-map detector instead (--set pyramid.design=single-map: the same weights)"
        )
    if getattr(model, "optimized", False):
        raise ConfigError(
            "export: this model was optimized for inference (folded weights); export a freshly loaded one"
        )


class ExportGraph(nn.Module):
    """The file's computation (see the module's notes): ``images [N, 3, H, W]`` -> the five :data:`OUTPUTS`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_exportable(model)
        self.preprocess = Preprocess(model.transform)
        self.detector = GRAPHS[detector_kind(model)](model)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        batch, resized, original = self.preprocess(images)
        boxes, scores, labels, levels, image = self.detector(batch, resized)
        return to_original(boxes, resized, original), scores, labels, levels, image
