"""``fpn models``: the model presets with their size (parameters) and cost (GFLOPs of one test-size forward pass).

GFLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, convolutions and
matrix products; NMS and indexing count nothing) on one forward pass in eval mode of an image at the
preset's test size: shorter side ``min_size[-1]``, 4:3 landscape, capped by ``max_size``. (torchvision's model
tables count multiply-adds, half as many as the FLOPs counted here.)
"""

from __future__ import annotations

import argparse
import logging

import torch

from fpn.bench import eval_size, forward_gflops
from fpn.config import DESIGNS, ModelConfig
from fpn.detection import build_detector
from fpn.detection.classes import real_classes
from fpn.presets import PRESETS, preset

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the model presets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="PRESET", help=f"presets to list (default: all of {', '.join(PRESETS)})")
    p.add_argument("--design", choices=DESIGNS, help="count for this pyramid design instead of the preset's")
    p.add_argument("--no-flops", action="store_true", help="skip the (slower) FLOP count")
    p.set_defaults(run=run)


def count(config: ModelConfig, *, flops: bool = True) -> dict[str, float | int | None]:
    """Parameters and (optionally) GFLOPs of one eval-mode forward pass at the preset's test size."""
    torch.manual_seed(0)
    model = build_detector(config).eval()
    params = sum(p.numel() for p in model.parameters())
    gflops = None
    if flops:
        height, width = eval_size(config)
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
        gflops = forward_gflops(model, image)
    return {"params": params, "gflops": gflops}


def run(args: argparse.Namespace) -> int:
    names = args.names or list(PRESETS)
    rows = []
    for name in names:
        config = preset(name, design=args.design)
        numbers = count(config, flops=not args.no_flops)
        height, width = eval_size(config)
        size = f"{height}x{width}"
        if config.pyramid.design == "image-pyramid":  # one forward pass runs every test scale
            size = "/".join(map(str, config.pyramid.test_scales)) + " (4:3)"
        gflops = "-" if numbers["gflops"] is None else f"{numbers['gflops']:.1f}"
        backbone = f"R{config.backbone.depth} w{config.backbone.width} {config.backbone.norm}"
        rows.append(
            (
                name,
                config.pyramid.design,
                backbone,
                f"{numbers['params'] / 1e6:.2f}M",
                gflops,
                size,
                str(len(real_classes(config.class_names))),  # r50-fpn: COCO's 80, not its 90 slots
            )
        )
    head = ("preset", "design", "backbone", "params", "GFLOPs", "test size", "classes")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    return 0
