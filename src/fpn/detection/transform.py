"""From user images to a padded batch, and detections back to the user's pixels.

The arithmetic follows torchvision's ``GeneralizedRCNNTransform`` step for step (normalise, then resize
with a bilinear ``interpolate`` whose scale factor is recomputed, then zero-pad to a multiple of the
coarsest stride), so that a torchvision checkpoint gives the same detections here.

What a caller may pass as an image, in training and inference alike (anything else raises
:class:`~fpn.errors.ImageError`, a ValueError, with a one-line message, before any image is processed):

* a float tensor ``[3, H, W]``, RGB, values in 0..1: used as it is;
* a uint8 tensor ``[3, H, W]``, values 0..255: divided by 255 (the same floats :func:`~fpn.data.images.pil_to_tensor`
  gives for the same pixels);
* a PIL image of any mode: converted by :func:`~fpn.data.images.pil_to_tensor`, onto the transform's device.

A float tensor with values outside 0..1 is refused rather than guessed at: 0..255 floats and images that are
already normalised both run without error but find nothing. An image too thin for the resize rule (a side
that would be resized to under 1 px, e.g. a 2000x3 strip under a 1333 px cap) is refused as well; a 1x1
image is fine: it is enlarged to the shorter side like any small image (one flat colour, so expect nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fpn.config import TransformConfig
from fpn.data.images import pil_to_tensor
from fpn.errors import ImageError


@dataclass
class ImageBatch:
    """Images padded into one tensor, with each image's size before padding (after resizing)."""

    tensors: torch.Tensor  # [N, 3, H_pad, W_pad]
    image_sizes: list[tuple[int, int]]  # (h, w) of each resized image inside the padding
    original_sizes: list[tuple[int, int]] = field(default_factory=list)  # (h, w) of each image as given


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

    def resized_size(self, size: Sequence[int], shorter: int) -> tuple[int, int]:
        """The (h, w) :meth:`resize` gives an (h, w) image: ``interpolate`` truncates size x scale."""
        scale = self.scale_for(size, shorter)
        return int(size[0] * scale), int(size[1] * scale)

    def resize(self, image: torch.Tensor, shorter: int) -> torch.Tensor:
        scale = self.scale_for(image.shape[-2:], shorter)
        if scale == 1.0:
            return image  # bilinear interpolation at scale 1 is the identity: an image already at size is kept
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]

    def forward(
        self,
        images: Sequence[torch.Tensor | Image.Image],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
        *,
        shorter: int | None = None,
    ) -> tuple[ImageBatch, list[dict[str, torch.Tensor]] | None]:
        """``images``: RGB [3, H_i, W_i] float 0..1 or uint8 tensors, or PIL images (see the module's notes).

        Returns the batch and targets with boxes resized to match. ``shorter`` overrides the shorter side
        (the image pyramid runs one model at several scales).
        """
        inputs = self._inputs(images)
        if targets is not None and len(targets) != len(inputs):
            raise ImageError(f"{len(inputs)} images but {len(targets)} targets; expected one target per image")
        self._check_sizes([tuple(image.shape[-2:]) for image, _ in inputs], shorter)
        resized, new_targets = [], [] if targets is not None else None
        for i, (image, owned) in enumerate(inputs):
            mean, std = self.mean.to(image), self.std.to(image)
            # In place when the float copy is ours (uint8 and PIL inputs): one full-size map fewer.
            image = image.sub_(mean).div_(std) if owned else (image - mean).div_(std)
            image = self.resize(image, shorter or self._shorter_side())
            resized.append(image)
            if targets is not None:
                target = dict(targets[i])
                target["boxes"] = resize_boxes(target["boxes"], inputs[i][0].shape[-2:], image.shape[-2:])
                new_targets.append(target)
        batch = self.batch(resized)
        batch.original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image, _ in inputs]
        return batch, new_targets

    def _inputs(self, images: Sequence[torch.Tensor | Image.Image]) -> list[tuple[torch.Tensor, bool]]:
        """Every image as a float tensor in 0..1, and whether that tensor is a fresh copy (ours to modify)."""
        if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.dim() < 4):
            raise ImageError("images must be a list of images (a batch), got a single one: pass [image]")
        if len(images) == 0:
            raise ImageError("no images given")
        inputs = []
        for i, image in enumerate(images):
            try:
                inputs.append(self._as_float(image))
            except ImageError as error:
                raise ImageError(f"images[{i}]: {error}" if len(images) > 1 else str(error)) from None
        return inputs

    def _as_float(self, image: torch.Tensor | Image.Image) -> tuple[torch.Tensor, bool]:
        """One image as a float tensor ``[3, H, W]`` in 0..1, or an ImageError saying what it is instead."""
        if isinstance(image, Image.Image):
            if min(image.size) < 1:
                raise ImageError(f"an image must be at least 1x1 px, got {image.width}x{image.height}")
            return pil_to_tensor(image).to(self.mean.device), True
        if not isinstance(image, torch.Tensor):
            hint = " (an H x W x 3 uint8 array: torch.from_numpy(array).permute(2, 0, 1))"
            hint = hint if hasattr(image, "__array__") else ""
            raise ImageError(f"an image must be a [3, H, W] tensor or a PIL image, got {type(image).__name__}{hint}")
        shape = tuple(image.shape)
        if image.dim() != 3 or shape[0] != 3:
            hint = " (channels last? use image.permute(2, 0, 1))" if image.dim() == 3 and shape[-1] == 3 else ""
            raise ImageError(f"images must be [3, H, W] tensors, got {shape}{hint}")
        if min(shape[1:]) < 1:
            raise ImageError(f"an image must be at least 1x1 px, got [3, H, W] = {shape}")
        if image.dtype == torch.uint8:
            return image.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0), True
        if not image.is_floating_point():
            raise ImageError(f"images must be float in 0..1 or uint8; got {image.dtype}")
        low, high = torch.stack(torch.aminmax(image)).tolist()  # one device sync, not two
        if math.isnan(low) or math.isnan(high):
            raise ImageError("images must be float in 0..1 or uint8; got NaN values")
        if low < 0.0:
            raise ImageError(f"images must be float in 0..1 or uint8; got min {low:.4g} (normalised already?)")
        if high > 1.0:
            raise ImageError(f"images must be float in 0..1 or uint8; got max {high:.4g} (0..255 values? pass uint8)")
        return image, False

    def _check_sizes(self, sizes: Sequence[tuple[int, int]], shorter: int | None) -> None:
        """Refuse an image the resize would shrink to under 1 px on a side, naming its size and the rule.

        Checked at the smallest shorter side this call may draw, so that multi-scale training refuses an
        image always or never, not by chance.
        """
        side = shorter or (min(self.min_size) if self.training else self.min_size[-1])
        for i, (h, w) in enumerate(sizes):
            rh, rw = self.resized_size((h, w), side)
            if min(rh, rw) < 1:
                where = f"images[{i}]: " if len(sizes) > 1 else ""
                raise ImageError(
                    f"{where}a {w}x{h} px image (width x height) is too thin for this model: resized (shorter side "
                    f"{side} px, longer side at most {self.max_size} px) it would be {rw}x{rh} px"
                )

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
        sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        if len(images) == 1 and sizes[0] == (height, width):
            return ImageBatch(images[0][None].contiguous(), sizes)  # nothing to pad: no copy
        tensors = images[0].new_zeros((len(images), 3, height, width))
        for img, slot in zip(images, tensors):
            slot[:, : img.shape[1], : img.shape[2]].copy_(img)
        return ImageBatch(tensors, sizes)

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
