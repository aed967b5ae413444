"""Print, as Markdown, the levels and tensor shapes each pyramid design produces for one input size.

    PYTHONPATH=src python tools/design_table.py --depth 50 --size 800x1216

docs/designs.md embeds the output of exactly that command.
"""

from __future__ import annotations

import argparse

import torch

from fpn.backbones import ResNet
from fpn.config import DESIGNS, PyramidConfig
from fpn.pyramids import build_pyramid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--size", default="800x1216", help="HxW of the (padded) input")
    parser.add_argument("--channels", type=int, default=256)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    backbone = ResNet(args.depth).eval()
    with torch.no_grad():
        bottom_up = backbone(torch.zeros(1, 3, height, width))
    print(f"Input 1 x 3 x {height} x {width}, ResNet-{args.depth}, d = {args.channels}.\n")
    print("| level | bottom-up shape |")
    print("|---|---|")
    for name, value in bottom_up.items():
        print(f"| {name} (stride {2 ** int(name[1:])}) | {' x '.join(map(str, value.shape))} |")
    print("\n| design | levels it predicts from | shapes | pyramid parameters |")
    print("|---|---|---|---|")
    for design in DESIGNS:
        pyramid = build_pyramid(PyramidConfig(design=design, channels=args.channels), backbone.levels).eval()
        with torch.no_grad():
            out = pyramid(bottom_up)
        shapes = "<br>".join(f"{k}: {' x '.join(map(str, v.shape))}" for k, v in out.items())
        params = sum(p.numel() for p in pyramid.parameters())
        print(f"| `{design}` | {', '.join(out)} | {shapes} | {params / 1e6:.2f} M |")


if __name__ == "__main__":
    main()
