"""``export_onnx``: a detector as one ONNX file, checked in onnxruntime against PyTorch before it is written.

The exporter is torch's TorchScript tracer (``torch.onnx.export(dynamo=False)``), chosen over the dynamo
exporter on purpose: the graph is full of data-dependent sizes (boxes above a threshold, NMS survivors,
RoIs per level), which the tracer records as plain ONNX ``NonZero`` / ``NonMaxSuppression`` outputs, while
``torch.export`` turns each into an unbacked symbolic size whose every later use needs a hint or a guard;
and the two ops without a PyTorch formulation (NMS, RoIAlign) map onto ONNX's own through an
``autograd.Function.symbolic`` (:mod:`fpn.export.ops`), the route torchvision's detectors take. Every shape
is traced as a tensor, so the file takes any image size (``dynamic_size``) and batch (``batch=None``).

The file's metadata (``metadata_props``) carries what ``fpn`` needs to run it as a detector: the model
config (JSON, class names and category ids inside), the precision, the input convention (docs/export.md).
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from fpn.config import to_dict
from fpn.errors import ConfigError, FpnError
from fpn.export.check import BOX_TOL, FP16_BOX_TOL, FP16_SCORE_TOL, SCORE_TOL, Difference, box_tolerance, compare
from fpn.export.graph import OUTPUTS, ExportGraph
from fpn.io import atomic_write_bytes
from fpn.version import __version__

#: The ``fpn.format`` metadata value: what :class:`~fpn.export.runtime.OnnxDetector` recognises.
FORMAT = "fpn-onnx-1"
PRECISIONS = ("fp32", "fp16")
INSTALL = "pip install 'fpn[onnx]'"


class ExportError(FpnError):
    """An export that cannot be made or that failed its own check against PyTorch."""


def require_onnx(what: str) -> tuple[object, object]:
    """``(onnx, onnxruntime)``, or a one-line FpnError saying what to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError(f"{what} needs onnx and onnxruntime: {INSTALL}") from None
    return onnx, onnxruntime


@dataclass
class ExportOptions:
    """``dynamic_size``: any H, W (else only ``size``); ``batch``: a fixed batch, or None for any."""

    opset: int = 17
    dynamic_size: bool = False
    size: tuple[int, int] = (480, 640)  # (H, W) of a static file, and of the first probe
    batch: int | None = 1
    precision: str = "fp32"

    def validate(self) -> None:
        if self.opset < 16:
            raise ConfigError(f"--opset {self.opset}: RoiAlign's half-pixel modes need opset 16 or later")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be {' or '.join(PRECISIONS)}; got {self.precision!r}")
        if self.precision == "fp16":
            # Measured (docs/export.md): the fp16 graph runs in onnxruntime's CPU provider, but on seeded micro-fpn
            # weights only 78-87% of float32 PyTorch's detections came back within 2 px / 0.02; no check
            # fit to pass that would mean anything, so no file.
            raise ConfigError(
                "--precision fp16: not exported: half-precision networks moved 13-22% of the detections beyond "
                "2 px / 0.02 of float32's in onnxruntime on the CPU; export fp32"
            )
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"batch must be at least 1 or dynamic; got {self.batch}")


@dataclass
class ExportReport:
    path: Path
    probes: list[tuple[tuple[int, ...], Difference]] = field(default_factory=list)  # (input shape, difference)

    def summary(self) -> str:
        checks = "; ".join(
            f"{'x'.join(map(str, shp))}: {d.count} detection(s), boxes within {d.box:.2g} px, "
            f"scores within {d.score:.2g}"
            for shp, d in self.probes
        )
        return (
            f"{self.path} ({self.path.stat().st_size / 2**20:.1f} MB), checked against PyTorch in onnxruntime: {checks}"
        )


def probe_image(height: int, width: int, seed: int) -> Tensor:
    """A deterministic, smooth, photo-like ``[3, H, W]`` float image in 0..1 (gradients and flat blocks)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 6, 8, generator=generator)
    image = torch.nn.functional.interpolate(base, size=(height, width), mode="bicubic", align_corners=False)[0]
    for _ in range(6):
        y, x = (torch.rand(2, generator=generator) * torch.tensor([height, width])).long().tolist()
        h, w = max(1, height // 4), max(1, width // 4)
        image[:, y : y + h, x : x + w] = torch.rand(3, 1, 1, generator=generator)
    return image.clamp(0.0, 1.0)


def probe_shapes(options: ExportOptions) -> list[tuple[int, int, int, int]]:
    """Inputs the check runs: the export's own, and with a dynamic axis a second of another (odd) size/batch."""
    batch = options.batch or 1
    shapes = [(batch, 3, *options.size)]
    if options.dynamic_size or options.batch is None:
        height, width = options.size
        if options.dynamic_size:
            height, width = (height * 3 // 4) | 1, (width * 5 // 4) | 1  # another size, odd on both sides
        shapes.append((3 if options.batch is None else batch, 3, height, width))
    return shapes


def export_graph(model: nn.Module, precision: str) -> ExportGraph:
    """The module the tracer runs: fp32 shares the model's weights, fp16 casts a copy's networks to half."""
    if precision == "fp16":
        model = copy.deepcopy(model)
        for network in model._networks():
            network.half()
        model.compute_dtype = torch.float16
    model.check_features = False  # its Python checks compare traced sizes; the contract held at build time
    return ExportGraph(model).eval()


def trace(graph: ExportGraph, probe: Tensor, options: ExportOptions) -> bytes:
    """The ONNX bytes of ``graph`` traced on ``probe`` (``[N, 3, H, W]``), with the dynamic axes asked for."""
    axes = ({0: "batch"} if options.batch is None else {}) | ({2: "height", 3: "width"} if options.dynamic_size else {})
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that it is the legacy exporter, and at every traced shape turned into a Python
        # value; the graph is checked against PyTorch right after, which is what those warnings ask for.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (probe,),
            buffer,
            dynamo=False,
            opset_version=options.opset,
            input_names=["images"],
            output_names=list(OUTPUTS),
            dynamic_axes={"images": axes} if axes else None,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def with_metadata(data: bytes, model: nn.Module, options: ExportOptions) -> bytes:
    """The model with fpn's metadata (config, precision, input and output convention) in ``metadata_props``."""
    onnx, _ = require_onnx("fpn export")
    proto = onnx.load_from_string(data)
    config = to_dict(model.config)
    entries = {
        "fpn.format": FORMAT,
        "fpn.version": __version__,
        "fpn.config": json.dumps(config),
        "fpn.class_names": json.dumps(list(model.config.class_names)),
        "fpn.precision": options.precision,
        "fpn.input": "images: float32 [N, 3, H, W], RGB, values 0..1; one size per batch",
        "fpn.outputs": "boxes [D, 4] xyxy input pixels, scores [D], labels [D] 1..K, levels [D] k of p_k, "
        "batch_index [D] the image of each detection (image-major, by decreasing score)",
    }
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "fpn", __version__
    return proto.SerializeToString()


def run_file(data: bytes | str, images: Tensor, threads: int | None = None) -> list[dict[str, Tensor]]:
    """The detections of an ONNX file (bytes or path) on ``images [N, 3, H, W]``, one dict per image."""
    _, ort = require_onnx("running an ONNX file")
    session_options = ort.SessionOptions()
    if threads:
        session_options.intra_op_num_threads = threads
    session = ort.InferenceSession(data, session_options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": images.numpy()})
    return split_outputs([torch.from_numpy(o) for o in outputs], images.shape[0])


def split_outputs(outputs: list[Tensor], num_images: int) -> list[dict[str, Tensor]]:
    """The file's flat outputs (:data:`~fpn.export.graph.OUTPUTS`) as one dict of tensors per image."""
    named = dict(zip(OUTPUTS, outputs))
    index = named.pop("batch_index")
    return [{key: value[index == i] for key, value in named.items()} for i in range(num_images)]


def export_onnx(
    model: nn.Module, path: str | os.PathLike, options: ExportOptions | None = None, *, check: bool = True
) -> ExportReport:
    """Write ``model`` (a detector, unoptimized, eval mode) as an ONNX file at ``path``, atomically, once its
    detections in onnxruntime match PyTorch's on every probe input (:func:`probe_shapes`); else ExportError.
    ``check=False`` skips the comparison (benchmarks timing seeded random weights, whose chaotic scores let
    float rounding between runtimes move boxes by pixels; the command always checks)."""
    options = options or ExportOptions()
    options.validate()
    require_onnx("fpn export")
    model = model.eval().cpu()
    graph = export_graph(model, options.precision)
    probes = [torch.stack([probe_image(h, w, seed=i * 7 + j) for j in range(n)]) for i, (n, _, h, w) in
              enumerate(probe_shapes(options))]  # fmt: skip
    data = with_metadata(trace(graph, probes[0], options), model, options)
    box_tol, score_tol = (BOX_TOL, SCORE_TOL) if options.precision == "fp32" else (FP16_BOX_TOL, FP16_SCORE_TOL)
    report = ExportReport(Path(path))
    for probe in probes if check else []:
        exported = run_file(data, probe)
        with torch.no_grad():
            reference = model(list(probe))
        tol = box_tolerance(model.transform, tuple(probe.shape[-2:]), box_tol)
        cap = model.output_config.detections_per_image
        differences = [compare(ours, theirs, tol, score_tol, cap) for ours, theirs in zip(exported, reference)]
        for difference in differences:
            if difference.problem:
                shape = "x".join(map(str, probe.shape))
                raise ExportError(f"{path}: not written: on a {shape} probe, the exported graph's {difference.problem}")
        worst = Difference(sum(d.count for d in differences), max(d.box for d in differences),
                           max(d.score for d in differences))  # fmt: skip
        report.probes.append((tuple(probe.shape), worst))
    atomic_write_bytes(data, path)
    return report
