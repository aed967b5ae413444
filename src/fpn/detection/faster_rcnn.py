"""The detector: image -> bottom-up backbone (C2..C5) -> pyramid design (P-levels) -> RPN -> RoI heads.

``FasterRCNN(config)`` builds every part from a :class:`~fpn.config.ModelConfig` and checks that they fit
(the level contract). Whatever the pyramid design, the detector only reads ``pyramid.levels``.

Calling convention (as torchvision's): ``model(images)`` in eval mode returns one dict per image with
``boxes`` [D, 4] (xyxy, original pixels), ``scores`` [D], ``labels`` [D] (1..K) and ``levels`` [D] (the
pyramid level k of the RoI that produced each detection); ``model(images, targets)`` in train mode returns
a dict of losses. Images are [3, H, W] RGB tensors in 0..1 (float) or 0..255 (uint8), or PIL images, of
any size; anything else is refused with an :class:`~fpn.errors.ImageError` (see :mod:`fpn.detection.transform`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from fpn.backbones import build_backbone
from fpn.backbones.fuse import fold_frozen_batchnorms, let_blocks_overwrite_inputs
from fpn.config import ModelConfig
from fpn.detection.image_pyramid import detect_multiscale
from fpn.detection.roi_heads import RoIHeads
from fpn.detection.rpn import RegionProposalNetwork
from fpn.detection.transform import DetectionTransform
from fpn.layers.winograd import use_winograd
from fpn.levels import check_features, describe
from fpn.pyramids import build_pyramid


class FasterRCNN(nn.Module):
    """Faster R-CNN with any of the paper's pyramid designs (``config.pyramid.design``)."""

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
        self.rpn = RegionProposalNetwork(self.levels, config.anchors.sizes, config.anchors.aspect_ratios, config.rpn)
        self.roi_heads = RoIHeads(self.levels, config.num_classes, config.roi_heads)
        self.last_counts: dict[str, list[int]] = {}  # per-level counts of the last forward, for `fpn show`
        self.check_features = True
        self.optimized = False  # see optimize_for_inference
        self.compute_dtype = torch.float32  # the networks' dtype (bfloat16 after optimize_for_inference(bf16))
        self.channels_last = False  # see use_channels_last

    def optimize_for_inference(self, dtype: torch.dtype = torch.float32, winograd: bool = True) -> FasterRCNN:
        """Fold frozen BatchNorms into their convolutions and run channels-last, optionally in ``dtype``.

        In float32 the detections equal the unoptimized model's (the torchvision parity test runs both).
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

    def _networks(self) -> tuple[nn.Module, ...]:
        """The parts that run on feature maps (everything but the transform and box post-processing)."""
        return (self.backbone, self.pyramid, self.rpn.head, self.roi_heads.box_head, self.roi_heads.box_predictor)

    def use_channels_last(self, enabled: bool = True) -> FasterRCNN:
        """Keep weights and feature maps channels-last (NHWC) in memory, for training or inference.

        oneDNN's CPU convolutions run NHWC directly, while NCHW maps are reordered at every call, so the
        convolutions run faster forward and backward (measured on the 2-core machine of benchmarks/). The
        results are the same to float rounding; state dicts keep their keys and shapes.
        """
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = enabled
        return self

    def train(self, mode: bool = True) -> FasterRCNN:
        if mode and getattr(self, "optimized", False):
            raise RuntimeError("this model was optimized for inference; load it again to train it")
        return super().train(mode)

    def describe(self) -> str:
        """The levels the design produces, one per line, with their anchor sizes."""
        sizes = self.rpn.anchor_generator.describe()
        lines = describe(self.levels).splitlines()
        return "\n".join(f"{line}  anchors {list(sizes[lv.name])}" for line, lv in zip(lines, self.levels))

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

    def forward(
        self,
        images: Sequence[torch.Tensor | Image.Image],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
        *,
        shorter: int | None = None,
    ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        if self.training and targets is None:
            raise ValueError("in training mode, targets are required")
        if not self.training and shorter is None and self.config.pyramid.design == "image-pyramid":
            cfg = self.config.roi_heads
            return detect_multiscale(
                lambda scale: self(images, shorter=scale),
                self.config.pyramid.test_scales,
                cfg.nms_thresh,
                cfg.detections_per_image,
            )
        # The transform checks and converts the images (PIL, uint8), so sizes are read from its batch.
        batch, targets = self.transform(images, targets if self.training else None, shorter=shorter)
        _, features = self.features(batch.tensors)
        proposals, _, rpn_losses, rpn_counts = self.rpn(
            features, batch.tensors.shape[-2:], batch.image_sizes, targets if self.training else None
        )
        detections, roi_losses, roi_counts = self.roi_heads(
            features, proposals, batch.image_sizes, targets if self.training else None
        )
        self.last_counts = {**rpn_counts, **roi_counts}
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, batch.image_sizes, batch.original_sizes)
