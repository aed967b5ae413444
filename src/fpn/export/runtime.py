"""An exported file as a detector: :class:`OnnxDetector` runs it in onnxruntime with FasterRCNN's calling convention.

``OnnxDetector(path)([image, ...])`` takes what :class:`~fpn.detection.FasterRCNN` takes (``[3, H, W]`` float
0..1 or uint8 tensors, PIL images) and returns one dict per image with ``boxes`` (input pixels, xyxy),
``scores``, ``labels`` (1..K) and ``levels`` (k of p_k), so ``fpn detect``, ``fpn eval`` and ``fpn bench``
take it where they take a PyTorch model (:func:`load_model` picks by the file name). Its ``config`` is the
exported model's (from the file's metadata): class names, category ids, thresholds. It runs on the CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from fpn.config import ModelConfig, from_dict
from fpn.data.images import pil_to_tensor
from fpn.detection.checkpoint import load_detector
from fpn.detection.transform import DetectionTransform
from fpn.errors import CheckpointError, ConfigError, ImageError
from fpn.export.graph import OUTPUTS
from fpn.export.onnx_export import FORMAT, require_onnx, split_outputs


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether ``--weights`` names an ONNX file (by its suffix, as checkpoints are told apart by content)."""
    return str(path).lower().endswith(".onnx")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[-1] if text else type(error).__name__)[:200]


class OnnxDetector:
    """An fpn-exported ONNX file run by onnxruntime on the CPU (see the module's notes)."""

    optimized = True  # nothing to optimize: detect_files leaves it as it is
    training = False

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        _, ort = require_onnx(f"running {path}")
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({_first_line(exc)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("fpn.format") != FORMAT or "fpn.config" not in meta:
            raise CheckpointError(f"{self.path}: an ONNX model, but not one fpn export wrote (no {FORMAT} metadata)")
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs != list(OUTPUTS):
            raise CheckpointError(f"{self.path}: outputs {outputs}, expected {list(OUTPUTS)}")
        self.config: ModelConfig = from_dict(ModelConfig, json.loads(meta["fpn.config"]), where=str(self.path))
        self.precision = meta.get("fpn.precision", "fp32")
        dims = self.session.get_inputs()[0].shape  # ints where fixed, names where dynamic
        self.batch = dims[0] if isinstance(dims[0], int) else None
        self.size = tuple(dims[2:]) if all(isinstance(d, int) for d in dims[2:]) else None
        self.transform = DetectionTransform(self.config.transform)  # for its resize rule (the thin-image check)
        self.last_counts: dict[str, list[int]] = {}

    def describe(self) -> str:
        size = "any size" if self.size is None else f"{self.size[0]}x{self.size[1]} only"
        batch = "any batch" if self.batch is None else f"batch {self.batch}"
        return f"{self.path}: ONNX ({self.precision}), {size}, {batch}, {self.config.num_classes - 1} classes"

    # The parts of nn.Module's interface the commands call.
    def eval(self) -> OnnxDetector:
        return self

    def train(self, mode: bool = True) -> OnnxDetector:
        if mode:
            raise ConfigError(f"{self.path}: an ONNX file cannot be trained; train from its checkpoint")
        return self

    def to(self, device: str | torch.device) -> OnnxDetector:
        if torch.device(device).type != "cpu":
            raise ConfigError(f"{self.path}: an ONNX file runs on the CPU here (onnxruntime); pass --device cpu")
        return self

    def __call__(self, images: Sequence[Tensor | Image.Image]) -> list[dict[str, Tensor]]:
        """One dict per image (``boxes``, ``scores``, ``labels``, ``levels``); images of one size run as one batch
        where the file takes any batch, else one by one."""
        if isinstance(images, (Tensor, Image.Image)):
            raise ImageError("images must be a list of images (a batch), got a single one: pass [image]")
        pixels = [self._pixels(image) for image in images]
        results: list[dict[str, Tensor] | None] = [None] * len(pixels)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(pixels):
            groups.setdefault(tuple(image.shape[-2:]), []).append(i)
        for members in groups.values():
            chunks = [members] if self.batch is None else [[i] for i in members]
            for chunk in chunks:
                for i, result in zip(chunk, self.run(torch.stack([pixels[i] for i in chunk]))):
                    results[i] = result
        return results

    def run(self, batch: Tensor) -> list[dict[str, Tensor]]:
        """The file on ``batch [N, 3, H, W]`` (float32 0..1): one dict per image. A file with a fixed batch
        ``B > 1`` is fed ``B`` copies of a lone image."""
        count = batch.shape[0]
        if self.batch is not None and self.batch != count:
            batch = batch[:1].expand(self.batch, -1, -1, -1)
        outputs = self.session.run(None, {"images": batch.contiguous().numpy()})
        return split_outputs([torch.from_numpy(o) for o in outputs], count)

    def _pixels(self, image: Tensor | Image.Image) -> Tensor:
        """One image as float32 ``[3, H, W]`` in 0..1, refused in one line where the file cannot take it."""
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image)
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise ImageError(f"images must be [3, H, W] tensors or PIL images; got {getattr(image, 'shape', image)!r}")
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        elif image.dtype != torch.float32:
            raise ImageError(f"images must be float32 in 0..1 or uint8 for {self.path}; got {image.dtype}")
        height, width = image.shape[-2:]
        if self.size is not None and (height, width) != self.size:
            raise ImageError(
                f"{self.path} takes {self.size[1]}x{self.size[0]} px images only (exported without --dynamic-size); "
                f"got {width}x{height}"
            )
        rh, rw = self.transform.resized_size((height, width), self.transform.min_size[-1])
        if min(rh, rw) < 1:
            raise ImageError(f"a {width}x{height} px image (width x height) is too thin for this model")
        return image.cpu()


def load_model(
    weights: str | os.PathLike,
    *,
    overrides: list[str] | None = None,
    precision: str = "fp32",
    threads: int | None = None,
):
    """``--weights`` as a model: an ONNX file as :class:`OnnxDetector` (settings and precision are baked into
    it, so ``overrides`` and a ``precision`` other than fp32 are refused), anything else through
    :func:`fpn.detection.checkpoint.load_detector`."""
    if not is_onnx(weights):
        return load_detector(weights, config_overrides=overrides)[0]
    if precision != "fp32":
        raise ConfigError(f"{weights}: an ONNX file's precision is fixed at export (fpn export --precision)")
    if overrides:
        raise ConfigError(
            f"{weights}: an ONNX file's settings ({', '.join(o.split('=')[0] for o in overrides)}) are fixed at "
            "export; export again from the checkpoint with them (fpn export --set KEY=VALUE)"
        )
    return OnnxDetector(weights, threads=threads)
