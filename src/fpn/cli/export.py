"""``fpn export --weights W``: the detector as one ONNX file, for onnxruntime, OpenVINO, TensorRT (docs/export.md).

The file maps ``images`` (float32 ``[N, 3, H, W]``, RGB in 0..1) to ``boxes``, ``scores``, ``labels``, ``levels``
and ``batch_index``: normalisation, resize, the networks, box decoding, per-level top-k and NMS are all in
the graph, and the config and class names in its metadata. Before it is written, the file runs in
onnxruntime on probe images (the export size, and another odd size or batch of 3 where an axis is dynamic)
and its detections are compared with PyTorch's: same labels, boxes within 0.01 px, scores within 1e-4;
a file that differs more is not written. ``fpn detect --weights model.onnx`` runs it.
Needs ``pip install 'fpn[onnx]'``.
"""

from __future__ import annotations

import argparse

from fpn.detection.checkpoint import load_detector
from fpn.errors import ConfigError
from fpn.export.onnx_export import PRECISIONS, ExportOptions, export_onnx, require_onnx
from fpn.io import check_writable


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a detector to ONNX (checked in onnxruntime)", description=__doc__)
    p.add_argument("--weights", required=True, help="checkpoint: RUN/model.pt or torchvision's fasterrcnn .pth")
    p.add_argument("--output", default="model.onnx", help="the ONNX file to write (default: %(default)s)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 16 or later (default: %(default)s)")
    p.add_argument(
        "--dynamic-size", action="store_true", help="take images of any height and width (default: --size only)"
    )
    p.add_argument(
        "--size",
        type=size_pair,
        default=(480, 640),
        metavar="HxW",
        help="the input's height x width: the only size without --dynamic-size, the first probe's with it "
        "(default: 480x640)",
    )
    p.add_argument(
        "--batch", type=batch_size, default=1, metavar="N|dynamic", help="images per call (default: %(default)s)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16 is refused for now: half-precision networks moved too many detections (docs/export.md) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="a model config override baked into the file (e.g. roi_heads.score_thresh=0.3); repeat for more",
    )
    p.set_defaults(run=run)


def size_pair(text: str) -> tuple[int, int]:
    """``480x640`` -> ``(480, 640)``."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in px, e.g. 480x640; got {text!r}") from None
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"each side must be at least 32 px; got {text!r}")
    return height, width


def batch_size(text: str) -> int | None:
    """``3`` -> 3, ``dynamic`` -> None."""
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a batch size of at least 1, or 'dynamic'; got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    require_onnx("fpn export")  # before any work: a missing package is the whole answer
    check_writable(args.output)
    if str(args.weights).lower().endswith(".onnx"):
        raise ConfigError(f"{args.weights}: already an ONNX file; export from the checkpoint it came from")
    overrides = [item.removeprefix("model.") for item in args.overrides or []]
    model, _ = load_detector(args.weights, config_overrides=overrides)
    options = ExportOptions(
        opset=args.opset, dynamic_size=args.dynamic_size, size=args.size, batch=args.batch, precision=args.precision
    )
    report = export_onnx(model, args.output, options)
    print(report.summary())
    return 0
