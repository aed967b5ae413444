"""``fpn anchors --data D``: object sizes of a data set against a model's anchor sizes and RoI levels, and a
tile size for ``--tile``: the largest whose resize brings the objects' 10th percentile to half the smallest
anchor (or that tiling is not needed, or that smaller anchors are)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fpn.io import atomic_write_text, check_writable


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("anchors", help="do a model's anchors fit a data set's objects?", description=__doc__)
    p.add_argument("--data", required=True, help="dataset YAML or built-in name (synthetic)")
    p.add_argument("--split", default="train", help="the split whose objects are measured (default: %(default)s)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--weights", help="a checkpoint whose config to check (default: --model's preset)")
    source.add_argument("--model", default="tiny-fpn", help="a preset (default: %(default)s)")
    p.add_argument("--design", help="pyramid design (changes the levels RoIs are pooled from; default: the preset's)")
    p.add_argument(
        "--out", default="anchors.png", help="histogram picture, summary beside it as .json (default: %(default)s)"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="model config overrides, e.g. anchors.sizes=[8,16]"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fpn.config import ModelConfig, apply_overrides, from_dict, to_dict
    from fpn.data import load_dataset
    from fpn.detection import build_detector
    from fpn.detection.checkpoint import load_detector
    from fpn.detection.fcos_targets import size_ranges
    from fpn.errors import ConfigError
    from fpn.presets import preset
    from fpn.viz.anchor_fit import fit, fit_anchor_free, fit_figure
    from fpn.viz.save import save_picture

    picture, summary_path = check_writable(args.out), check_writable(Path(args.out).with_suffix(".json"))
    dataset = load_dataset(args.data, args.split, check_files=False)
    if args.weights:
        model, _ = load_detector(args.weights, config_overrides=args.overrides)
        config = model.config
    else:
        data = apply_overrides(to_dict(preset(args.model, design=args.design)), list(args.overrides))
        config = from_dict(ModelConfig, data)
        config.class_names = list(dataset.names)
        model = build_detector(config)
    if hasattr(model, "roi_heads"):  # two-stage: the levels RoIs are pooled from, by the paper's rule
        result = fit(dataset, config, [lv.index for lv in model.roi_heads.pooler.levels])
    elif config.detector == "fcos":  # anchor-free: the distances each level regresses
        ranges = size_ranges(model.levels, config.fcos.size_range_scale)
        reach = {lv.name: band for lv, band in zip(model.levels, ranges)}
        result = fit_anchor_free(dataset, config, reach, model.levels[0].stride)
    else:
        per_level = model.anchor_sizes()
        if not per_level:
            raise ConfigError(f"fpn anchors: the {config.detector} detector has no anchors to fit")
        result = fit(
            dataset,
            config,
            [],
            anchor_sizes=sorted(s for v in per_level.values() for s in v),
            level_ranges=anchor_ranges(per_level),
        )
    name = args.weights or f"{args.model} ({config.pyramid.design})"
    figure = fit_figure(result, f"{args.data} [{args.split}] vs {name}")
    save_picture(figure, picture, dpi=110)
    summary = result.summary()
    atomic_write_text(json.dumps(summary, indent=2) + "\n", summary_path)
    print(f"{summary['objects']} objects; size percentiles (1/10/50/90/99): {summary['size_percentiles']}")
    if config.detector == "fcos":
        print(f"object sizes per level {summary['roi_levels']}")
    else:
        kind = "RoI levels" if hasattr(model, "roi_heads") else "anchor levels"
        print(f"anchor sizes {summary['anchor_sizes']}; {kind} {summary['roi_levels']}")
    for note in result.notes:
        print(f"- {note}")
    if result.tile is not None:
        print(result.tile.line)
    print(f"picture -> {args.out}")
    return 0


def anchor_ranges(per_level: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, float]]:
    """The object sizes each level's anchors serve: from its smallest anchor to the next level's (open at both
    ends), as a one-stage detector's IoU matcher spreads objects over its levels."""
    names = list(per_level)
    lows = [min(per_level[name]) for name in names]
    return {
        name: (0.0 if i == 0 else lows[i], float("inf") if i == len(names) - 1 else lows[i + 1])
        for i, name in enumerate(names)
    }
