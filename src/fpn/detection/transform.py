"""From user images to a padded batch, and detections back to the user's pixels.

The arithmetic follows torchvision's ``GeneralizedRCNNTransform`` step for step (normalise, then resize
with a bilinear ``interpolate`` whose scale factor is recomputed, then zero-pad to a multiple of the
coarsest stride), so that a torchvision checkpoint gives the same detections here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fpn.config import TransformConfig


@dataclass
class ImageBatch:
    """Images padded into one tensor, with each image's size before padding (after resizing)."""

    tensors: torch.Tensor  # [N, 3, H_pad, W_pad]
    image_sizes: list[tuple[int, int]]  # (h, w) of each resized image inside the padding


def resize_boxes(boxes: torch.Tensor, old: Sequence[int], new: Sequence[int]) -> torch.Tensor:
    """Scale ``[N, 4]`` xyxy boxes from an ``old`` (h, w) image to a ``new`` one."""
    ratio_h = torch.tensor(new[0], dtype=torch.float32, device=boxes.device) / torch.tensor(
        old[0], dtype=torch.float32, device=boxes.device
    )
    ratio_w = torch.tensor(new[1], dtype=torch.float32, device=boxes.device) / torch.tensor(
        old[1], dtype=torch.float32, device=boxes.device
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


class DetectionTransform(nn.Module):
    """Normalise, resize (shorter side ``min_size``, longer at most ``max_size``) and batch images.

    In training, the shorter side is drawn at random from ``min_size`` (multi-scale training).
    ``size_divisible`` is the coarsest stride of the model's levels: padding to it keeps every level's
    map aligned with the image.
    """

    def __init__(self, config: TransformConfig, size_divisible: int = 32) -> None:
        super().__init__()
        self.min_size = list(config.min_size)
        self.max_size = config.max_size
        self.size_divisible = size_divisible
        self.register_buffer("mean", torch.tensor(config.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(3, 1, 1), persistent=False)
        self.generator: torch.Generator | None = None  # set for reproducible multi-scale choices

    def scale_for(self, size: Sequence[int], shorter: int) -> float:
        """The resize factor for an (h, w) image: shorter side to ``shorter``, longer side capped."""
        return min(shorter / min(size), self.max_size / max(size))

    def resize(self, image: torch.Tensor, shorter: int) -> torch.Tensor:
        scale = self.scale_for(image.shape[-2:], shorter)
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]

    def forward(
        self,
        images: Sequence[torch.Tensor],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
        *,
        shorter: int | None = None,
    ) -> tuple[ImageBatch, list[dict[str, torch.Tensor]] | None]:
        """``images``: [3, H_i, W_i] RGB in 0..1. Returns the batch and targets with boxes resized to match.

        ``shorter`` overrides the shorter side (the image pyramid runs one model at several scales).
        """
        resized, new_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"images must be [3, H, W] tensors, got {tuple(image.shape)}")
            image = (image - self.mean.to(image)) / self.std.to(image)
            image = self.resize(image, shorter or self._shorter_side())
            resized.append(image)
            if targets is not None:
                target = dict(targets[i])
                target["boxes"] = resize_boxes(target["boxes"], images[i].shape[-2:], image.shape[-2:])
                new_targets.append(target)
        return self.batch(resized), new_targets

    def _shorter_side(self) -> int:
        if self.training and len(self.min_size) > 1:
            pick = torch.randint(len(self.min_size), (1,), generator=self.generator).item()
            return self.min_size[pick]
        return self.min_size[-1]

    def batch(self, images: Sequence[torch.Tensor]) -> ImageBatch:
        """Zero-pad images to a common size that is a multiple of ``size_divisible``."""
        stride = self.size_divisible
        height = -(-max(img.shape[1] for img in images) // stride) * stride
        width = -(-max(img.shape[2] for img in images) // stride) * stride
        tensors = images[0].new_zeros((len(images), 3, height, width))
        for img, slot in zip(images, tensors):
            slot[:, : img.shape[1], : img.shape[2]].copy_(img)
        return ImageBatch(tensors, [(int(img.shape[1]), int(img.shape[2])) for img in images])

    @staticmethod
    def postprocess(
        detections: list[dict[str, torch.Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[Sequence[int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Map detection boxes from resized-image pixels back to the original image's pixels."""
        for det, size, original in zip(detections, image_sizes, original_sizes):
            det["boxes"] = resize_boxes(det["boxes"], size, original)
        return detections
