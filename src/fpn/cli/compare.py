"""``fpn compare``: train every pyramid design under one detector, evaluate each and measure what it costs.

Every design gets the same run config (the preset, the demo's train settings, the budget, the seed, the
``key=value`` overrides); only ``model.pyramid.design`` differs. ``image-pyramid`` is the trained
``single-map`` model run at the preset's test scales, so it needs no training of its own. For each design:
COCO AP, AP50, APs, APm, APl, AR100 on the val split; GFLOPs and CPU latency of one image; parameters; the
memory one training step and one inference pass add (see ``fpn.compare`` for exactly how each is measured).

OUT receives results.json, results.md (every number also as a ratio to fpn), ap_by_size.png,
accuracy_vs_latency.png and runs/<design>/. Run the same command again to continue an interrupted
comparison: finished runs are reused, interrupted ones resumed.

The default budget (--iters below, the same for every design) is calibrated so that the whole comparison of
tiny-fpn on the synthetic set takes under 20 minutes on a 2-core CPU (one seed; --seeds N takes N times as long).

With --seeds N every design trains N times (seeds --seed to --seed+N-1); the table gives each metric's mean
and its range over the seeds, and a last section says plainly which differences between designs exceed that
seed-to-seed spread (every seed of one above every seed of the other) and which do not. Latency is timed once
every design is trained, in rounds that alternate across the designs, so that the machine's drift falls on all.
"""

from __future__ import annotations

import argparse
import sys

from fpn.compare import DEFAULT_DESIGNS, DEFAULT_ITERS, LATENCY_RUNS, compare
from fpn.config import DESIGNS
from fpn.io import check_writable
from fpn.presets import PRESETS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train, evaluate and measure every pyramid design on the same data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="synthetic", help="dataset YAML or built-in name (default: %(default)s)")
    p.add_argument(
        "--designs",
        default=",".join(DEFAULT_DESIGNS),
        help=f"comma-separated designs among {', '.join(DESIGNS)} (default: all)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, help=f"iterations per design (default: {DEFAULT_ITERS})")
    budget.add_argument("--minutes", type=float, help="minutes per design and seed (the schedule follows the clock)")
    p.add_argument(
        "--model",
        help=f"preset: {', '.join(PRESETS)} (default: --detector's CPU preset: tiny-fpn, tiny-retinanet, ...)",
    )
    p.add_argument(
        "--detector",
        choices=tuple(DETECTOR_PRESETS),
        default="faster-rcnn",
        help="the detector every design runs under, when --model is not given: its CPU preset (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed, one for every design (default: %(default)s)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train every design with N seeds (--seed .. --seed+N-1): each metric's mean and range over them, and "
        "which differences exceed that seed-to-seed spread (default: %(default)s)",
    )
    p.add_argument(
        "--backbone-weights",
        metavar="PATH",
        help="an ImageNet ResNet checkpoint (torchvision layout) every design's backbone starts from, the paper's "
        "setting; its depth and width must be the preset's, e.g. --model r18-fpn (default: none, from scratch)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for training and every measurement (default: torch's)")
    p.add_argument(
        "--latency-runs",
        type=int,
        default=LATENCY_RUNS,
        help="timed forward passes per design, in rounds alternating across the designs (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="output folder (an existing one is continued)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="run config overrides, e.g. train.lr=0.01")
    p.set_defaults(run=run)


#: ``--detector`` -> the preset that trains it from scratch on a CPU in minutes.
DETECTOR_PRESETS = {"faster-rcnn": "tiny-fpn", "retinanet": "tiny-retinanet", "fcos": "tiny-fcos"}


def run(args: argparse.Namespace) -> int:
    designs = [name.strip() for name in args.designs.split(",") if name.strip()]
    out = check_writable(args.out, folder=True)  # before any training; creates nothing
    results = compare(
        designs,
        out_dir=out,
        data=args.data,
        model_preset=args.model or DETECTOR_PRESETS[args.detector],
        iters=args.iters,
        minutes=args.minutes,
        seed=args.seed,
        seeds=args.seeds,
        backbone_weights=args.backbone_weights,
        threads=args.threads,
        overrides=list(args.overrides),
        latency_runs=args.latency_runs,
        progress=sys.stderr.isatty(),
    )
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    print("\n".join(table))
    print("\n" + "\n".join(results["differences"]))
    print(f"\n{len(results['designs'])} designs compared: {out}  (results.md, results.json, *.png, runs/)")
    return 0
