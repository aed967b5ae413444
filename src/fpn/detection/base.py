"""What every detector shares: image -> bottom-up backbone (C-levels) -> pyramid design (P-levels) -> a head.

:class:`PyramidDetector` builds the transform, backbone and pyramid from a :class:`~fpn.config.ModelConfig`
and owns what does not depend on the head: the level contract's check, inference optimisation (folded
frozen BatchNorms, channels-last, Winograd, bfloat16) and the refusal to train an optimized model. A
detector (:class:`~fpn.detection.faster_rcnn.FasterRCNN`, RetinaNet, FCOS) adds its head, reading only
``self.levels``, never which design produced them, and lists its head's networks in :meth:`_networks`.

Calling convention (as torchvision's): ``model(images)`` in eval mode returns one dict per image with
``boxes`` [D, 4] (xyxy, original pixels), ``scores`` [D], ``labels`` [D] (1..K) and ``levels`` [D] (the
pyramid level k that produced each detection); ``model(images, targets)`` in train mode returns a dict of
losses. Images are [3, H, W] RGB tensors in 0..1 (float) or 0..255 (uint8), or PIL images, of any size.

Hooks a detector provides, so that the commands above it (``fpn bench``, ``show``, ``anchors``, ``detect``)
never ask which detector they hold:

* :attr:`output_config` is the config section with its inference settings (``score_thresh``, ``nms_thresh``,
  ``detections_per_image``): ``roi_heads`` for Faster R-CNN, ``retinanet``, ``fcos``
  (:data:`OUTPUT_SECTIONS`; :func:`output_section` names it for a config, before any model is built);
* :meth:`forward` is shared (image-pyramid test scales, transform, features, post-processing); a detector
  implements :meth:`run_head`: the pyramid's maps -> detections in resized-image pixels, or losses;
* :meth:`stages` names the child modules ``forward`` calls after the pyramid, in order (``("rpn",
  "roi_heads")``; a one-stage detector's head and its decoder): ``fpn bench`` times each with hooks;
* :meth:`level_counts` says, per level, what the last forward counted there (anchors, proposals, RoIs,
  candidates: the detector's own words), for ``fpn show``; by default read from ``self.last_counts``,
  ``{what: [count per level of self.levels]}``;
* :meth:`positives` counts, per level, the anchors (or locations) the training assignment makes positive for
  some ground-truth boxes (``fpn show --box``);
* :meth:`level_roles` says in a few words which objects each level is meant for (show's legend);
* :meth:`anchor_sizes` gives each level's anchor sizes (empty for an anchor-free detector), read by
  :meth:`describe` and ``fpn anchors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from fpn.backbones import build_backbone
from fpn.backbones.fuse import fold_frozen_batchnorms, let_blocks_overwrite_inputs
from fpn.config import ModelConfig
from fpn.detection.image_pyramid import detect_multiscale
from fpn.detection.transform import DetectionTransform, ImageBatch
from fpn.layers.winograd import use_winograd
from fpn.levels import check_features, describe
from fpn.pyramids import build_pyramid


@dataclass(frozen=True)
class ClassRows:
    """How a class-specific tensor's first dimension is laid out, for fine-tuning to new classes.

    Dimension 0 is ``groups`` blocks (one per anchor shape in RetinaNet's classifier; 1 elsewhere), each of
    ``slots`` class slots (background first where ``background``, then the classes in order), each of
    ``rows`` rows (1 for a score, 4 for a class-specific box).
    """

    rows: int = 1
    background: bool = True
    groups: int = 1

    def slots(self, num_classes: int) -> int:
        """Class slots per group for ``num_classes`` real classes."""
        return num_classes + int(self.background)

    def size(self, num_classes: int) -> int:
        return self.groups * self.slots(num_classes) * self.rows

    def index(self, group: int, slot: int, num_classes: int) -> slice:
        """The rows of class slot ``slot`` (background, if any, is slot 0) in block ``group``."""
        start = (group * self.slots(num_classes) + slot) * self.rows
        return slice(start, start + self.rows)


class PyramidDetector(nn.Module):
    """The shared trunk of every detector: transform, backbone and pyramid, and their optimisation."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = build_backbone(config.backbone)
        self.pyramid = build_pyramid(config.pyramid, self.backbone.levels)
        # A backbone stage the pyramid never reads would hold parameters without gradients: drop it.
        self.backbone.truncate(self.pyramid.in_levels[-1].name)
        self.levels = self.pyramid.levels
        # Pad to the backbone's coarsest stride (32 for C5, as torchvision does): extra levels above it
        # (P6, P7) are subsampled with rounding up, so they need no padding of their own.
        self.transform = DetectionTransform(config.transform, size_divisible=self.backbone.levels[-1].stride)
        self.last_counts: dict[str, list[int]] = {}  # per-level counts of the last forward, for `fpn show`
        self.check_features = True
        self.optimized = False  # see optimize_for_inference
        self.compute_dtype = torch.float32  # the networks' dtype (bfloat16 after optimize_for_inference(bf16))
        self.channels_last = False  # see use_channels_last

    def _networks(self) -> tuple[nn.Module, ...]:
        """The parts that run on feature maps (everything but the transform and box post-processing)."""
        return (self.backbone, self.pyramid)

    def class_layers(self) -> dict[str, ClassRows]:
        """The state-dict keys whose size depends on the class count, and their layout (for fine-tuning)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its class-specific layers")

    @property
    def output_config(self) -> Any:
        """The config section with ``score_thresh``, ``nms_thresh`` and ``detections_per_image``."""
        return getattr(self.config, output_section(self.config))

    def stages(self) -> tuple[str, ...]:
        """The child modules ``forward`` calls after the pyramid, in order (each timed by ``fpn bench``)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its stages")

    def level_counts(self) -> dict[str, dict[str, int]]:
        """Per level name, what the last forward counted there (summed over its batch)."""
        return {
            lv.name: {key: values[i] for key, values in self.last_counts.items()} for i, lv in enumerate(self.levels)
        }

    def positives(
        self, padded_size: Sequence[int], feature_sizes: dict[str, Sequence[int]], boxes: torch.Tensor
    ) -> dict[str, int]:
        """Per level name, the anchors or locations training would make positive for ``boxes`` ``[G, 4]``
        (xyxy, resized-image pixels) on a padded image of ``padded_size`` with maps of ``feature_sizes``."""
        raise NotImplementedError(f"{type(self).__name__} does not count positives")

    def level_roles(self) -> dict[str, str]:
        """Per level name, a few words on which objects it is meant for (``"anchors 32-50 px"``)."""
        sizes = self.anchor_sizes()
        return {lv.name: f"anchors {min(sizes[lv.name]):g}-{max(sizes[lv.name]):g} px" for lv in self.levels}

    def anchor_sizes(self) -> dict[str, tuple[float, ...]]:
        """Per level name, its anchor sizes in resized-image pixels; empty for an anchor-free detector."""
        return {}

    def describe(self) -> str:
        """The levels the design produces, one per line, with their anchor sizes (if any)."""
        sizes = self.anchor_sizes()
        lines = describe(self.levels).splitlines()
        return "\n".join(
            f"{line}  anchors {list(sizes[lv.name])}" if lv.name in sizes else line
            for line, lv in zip(lines, self.levels)
        )

    def optimize_for_inference(self, dtype: torch.dtype = torch.float32, winograd: bool = True) -> PyramidDetector:
        """Fold frozen BatchNorms into their convolutions and run channels-last, optionally in ``dtype``.

        In float32 the detections equal the unoptimized model's (the torchvision parity tests run both).
        ``winograd`` (float32 only) computes the 3x3 stride-1 convolutions of 128 channels or more with
        Winograd F(4x4, 3x3) (:mod:`fpn.layers.winograd`): 4x fewer multiplications, float32 results that
        differ from the direct convolution's by ~1e-5 of the map's range; pass ``False`` for the direct
        convolutions. ``dtype=torch.bfloat16`` stores the networks' weights in bfloat16 and runs them so (no
        autocast: weights are cast once, not at every call), while anchors, RoIAlign's sampling, box
        decoding, scores and NMS stay in float32; its accuracy change is measured, not zero
        (benchmarks/bf16_accuracy.py); Winograd is not used there (bfloat16 cannot carry its transforms).
        The weights change shape, so an optimized model can neither train nor be saved: load it again.
        On the CPU, convolution + shortcut + ReLU run as one oneDNN kernel (:mod:`fpn.layers.conv_pointwise`)
        that writes each ResNet block's result into the block's input: a forward hook that keeps a block's
        output sees it overwritten by the next block (the stage outputs C2..C5 are not).
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"optimize_for_inference supports float32 and bfloat16, not {dtype}")
        if self.config.backbone.norm == "frozen_bn":
            fold_frozen_batchnorms(self.backbone)
            let_blocks_overwrite_inputs(self.backbone)  # fused residual blocks accumulate in place
        self.use_channels_last()
        if dtype != torch.float32:
            for network in self._networks():
                network.to(dtype)
        elif winograd:
            self.use_winograd()
        # An optimized model never trains: with no parameter asking for gradients, a call with autograd on (a
        # notebook's) builds no graph, and weights made under inference_mode (as `fpn detect` makes them), which
        # autograd could not save, are never asked to be.
        self.requires_grad_(False)
        self.compute_dtype = dtype
        self.optimized = True
        return self.eval()

    def use_winograd(self, min_channels: int = 128) -> int:
        """Compute the wide 3x3 stride-1 convolutions with Winograd F(4x4, 3x3) on the CPU, in training too.

        The swapped modules keep their parameters, names and state dict (:mod:`fpn.layers.winograd`); float32
        only (bfloat16 and autocast take the direct convolution), results within ~1e-5 of the map's range of
        the direct convolution's. Returns how many convolutions were swapped (none in narrow presets: below
        128 channels (``min_channels``) the transforms cost more than they save).
        """
        return use_winograd(self, min_channels)  # one workspace for all layers: they run one after another

    def use_channels_last(self, enabled: bool = True) -> PyramidDetector:
        """Keep weights and feature maps channels-last (NHWC) in memory, for training or inference.

        oneDNN's CPU convolutions run NHWC directly, while NCHW maps are reordered at every call, so the
        convolutions run faster forward and backward (measured on the 2-core machine of benchmarks/). The
        results are the same to float rounding; state dicts keep their keys and shapes.
        """
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = enabled
        return self

    def train(self, mode: bool = True) -> PyramidDetector:
        if mode and getattr(self, "optimized", False):
            raise RuntimeError("this model was optimized for inference; load it again to train it")
        return super().train(mode)

    def forward(
        self,
        images: Sequence[torch.Tensor | Image.Image],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
        *,
        shorter: int | None = None,
    ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        """Detections per image (eval; boxes in the images' own pixels), or the losses (training, with targets).

        ``shorter`` overrides the resize's shorter side; the image-pyramid design runs once per test scale
        and merges the scales' detections with the detector's own NMS and cap (:attr:`output_config`).
        """
        if self.training and targets is None:
            raise ValueError("in training mode, targets are required")
        if not self.training and shorter is None and self.config.pyramid.design == "image-pyramid":
            cfg = self.output_config
            return detect_multiscale(
                lambda scale: self(images, shorter=scale),
                self.config.pyramid.test_scales,
                cfg.nms_thresh,
                cfg.detections_per_image,
            )
        # The transform checks and converts the images (PIL, uint8), so sizes are read from its batch.
        batch, targets = self.transform(images, targets if self.training else None, shorter=shorter)
        _, features = self.features(batch.tensors)
        result = self.run_head(features, batch, targets if self.training else None)
        if self.training:
            return result
        return self.transform.postprocess(result, batch.image_sizes, batch.original_sizes)

    def run_head(
        self,
        features: dict[str, torch.Tensor],
        batch: ImageBatch,
        targets: Sequence[dict[str, torch.Tensor]] | None,
    ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        """The detector on the pyramid's maps of a padded ``batch``: per image ``boxes`` (resized-image
        pixels), ``scores``, ``labels``, ``levels``; or, with ``targets``, a dict of losses. Sets
        ``self.last_counts``."""
        raise NotImplementedError(f"{type(self).__name__} has no head")

    def features(self, tensors: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Bottom-up maps C2..C5 and pyramid maps for a padded, normalised batch ``[N, 3, H, W]``."""
        tensors = tensors.to(self.compute_dtype)  # a no-op unless optimized for bf16
        if self.channels_last:
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        bottom_up = self.backbone(tensors)
        pyramid = self.pyramid(bottom_up)
        if self.check_features:
            # Once is enough: the contract holds for every later input once it holds for one.
            check_features(pyramid, self.levels, producer=f"pyramid '{self.config.pyramid.design}'")
            self.check_features = False
        return bottom_up, pyramid


#: ``config.detector`` -> the config section with its ``score_thresh``, ``nms_thresh``, ``detections_per_image``.
OUTPUT_SECTIONS: dict[str, str] = {"faster-rcnn": "roi_heads", "retinanet": "retinanet", "fcos": "fcos"}


def output_section(config: ModelConfig) -> str:
    """The config section holding the inference settings of the detector ``config`` describes (for overrides
    made before a model is built, e.g. ``fpn detect --nms-iou``)."""
    return OUTPUT_SECTIONS[config.detector]
