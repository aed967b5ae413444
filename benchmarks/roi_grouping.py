"""How RoIAlign's grouping of RoIs by crop size weighs on inference: fine, coarse, and the cost-based choice.

    .venv/bin/python benchmarks/roi_grouping.py --weights runs/tiny/model.pt --size 320    # a trained CPU preset
    .venv/bin/python benchmarks/roi_grouping.py --size 800                                 # r50-fpn, seeded weights

:mod:`fpn.ops.roi_align` pools RoIs in chunks of one padded crop size. Training uses the fine rounding
(``_padded``: even sizes, then steps of a quarter); at inference each level takes the fine plan or a coarse one
(powers of two: fewer chunks, more gathered pixels), whichever ``_cost`` estimates cheaper with
``_CHUNK_COST_IN_VALUES``. This times the three (the fine one forced by a chunk cost of 0, the coarse one by a
huge cost, and the default), optimized fp32 at batch 1, in alternating rounds in one process: the whole forward
and the pooler alone (``_PoolCrops.forward``); detections are compared too (padding carries zero weight).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

from fpn.data import load_dataset
from fpn.detection import load_detector
from fpn.detection.build import build_detector
from fpn.presets import preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_stage import interleaved_rounds
from tiling import cpu_model

roi_align = importlib.import_module("fpn.ops.roi_align")


RULES = {"fine": 0, "cost-based": roi_align._CHUNK_COST_IN_VALUES, "power-of-two": 1 << 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a two-stage checkpoint (default: r50-fpn, seeded weights)")
    parser.add_argument("--size", type=int, default=800, help="shorter side of the images")
    parser.add_argument("--images", type=int, default=20, help="synthetic val images per round (with --weights)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.weights:
        model, _ = load_detector(args.weights)
        val = load_dataset("synthetic", "val")
        images = [val.load_image(i) for i in range(args.images)]
    else:
        torch.manual_seed(0)
        model = build_detector(preset("r50-fpn")).eval()
        ramp = torch.linspace(0, 0.5, args.size * 3 // 2)
        images = [(torch.rand(3, args.size, args.size * 3 // 2, generator=torch.Generator().manual_seed(1)) * 0.5
                   + ramp).clamp(0, 1)]  # fmt: skip
    model.config.transform.min_size, model.config.transform.max_size = [args.size], args.size * 2
    pooled: dict[str, list[float]] = {rule: [] for rule in RULES}
    forward, current = roi_align._PoolCrops.forward, ["fine"]

    def timed(ctx, *inputs):
        start = time.perf_counter()
        result = forward(ctx, *inputs)
        pooled[current[0]].append(time.perf_counter() - start)
        return result

    roi_align._PoolCrops.forward = staticmethod(timed)

    def run(rule: str):
        current[0], roi_align._CHUNK_COST_IN_VALUES = rule, RULES[rule]
        return [model([image])[0] for image in images]

    with torch.inference_mode():
        model = model.optimize_for_inference()
        outputs = {rule: run(rule) for rule in RULES}
        rounds = interleaved_rounds({rule: (lambda r=rule: run(r)) for rule in RULES}, args.rounds)
    roi_align._CHUNK_COST_IN_VALUES, roi_align._PoolCrops.forward = RULES["cost-based"], forward
    same = all(
        torch.equal(a["labels"], b["labels"]) and torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
        for rule in RULES
        for a, b in zip(outputs["fine"], outputs[rule], strict=True)
    )
    print(f"{args.weights or 'r50-fpn (seeded weights)'}, {len(images)} image(s) at {args.size} px, "
          f"{cpu_model()}, {args.threads} threads; detections equal: {same}")  # fmt: skip
    for rule in RULES:
        per_image = 1000 * statistics.median(rounds[rule]) / len(images)
        pool = 1000 * statistics.median(pooled[rule])
        print(f"  {rule:13s} forward {per_image:8.1f} ms/image   RoIAlign {pool:6.1f} ms/call")


if __name__ == "__main__":
    main()
