"""RoIAlign's two paths at inference: the crop path (training's, with a backward) and the weighted gather.

    .venv/bin/python benchmarks/roi_align_paths.py --weights runs/tiny/model.pt --size 320   # a trained CPU preset
    .venv/bin/python benchmarks/roi_align_paths.py --size 800                                # r50-fpn, seeded weights

When nothing needs a gradient, :mod:`fpn.ops.roi_align` pools with :mod:`fpn.ops.roi_align_inference` (each bin
one weighted sum of map rows, an embedding-bag kernel per level); training keeps the crop path (RoIs grouped by
crop size, two batched products per group). This times both on the same model, the crop path forced by
declaring the inference path unsupported: optimized fp32 (and bf16 with ``--bf16``) at batch 1, the whole
forward and the pooling call alone, in alternating rounds in one process; the detections are compared too.
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
from fpn.ops import poolers
from fpn.presets import preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_stage import interleaved_rounds
from tiling import cpu_model

inference = importlib.import_module("fpn.ops.roi_align_inference")
PATHS = ("crop", "inference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a two-stage checkpoint (default: r50-fpn, seeded weights)")
    parser.add_argument("--size", type=int, default=800, help="shorter side of the images")
    parser.add_argument("--images", type=int, default=20, help="synthetic val images per round (with --weights)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="optimize for bfloat16 instead of float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.weights:
        model, _ = load_detector(args.weights)
        val = load_dataset("synthetic", "val")
        images = [(val.load_image(i) * 255).round().to(torch.uint8) for i in range(args.images)]
    else:
        torch.manual_seed(0)
        model = build_detector(preset("r50-fpn")).eval()
        ramp = torch.linspace(0, 0.5, args.size * 3 // 2)
        images = [(torch.rand(3, args.size, args.size * 3 // 2, generator=torch.Generator().manual_seed(1)) * 0.5
                   + ramp).clamp(0, 1)]  # fmt: skip
    model.config.transform.min_size, model.config.transform.max_size = [args.size], args.size * 2
    pooled: dict[str, list[float]] = {path: [] for path in PATHS}
    pool, supports, current = poolers.roi_align_levels, inference.supports, ["crop"]

    def timed_pool(*pool_args):
        start = time.perf_counter()
        result = pool(*pool_args)
        pooled[current[0]].append(time.perf_counter() - start)
        return result

    poolers.roi_align_levels = timed_pool

    def run(path: str):
        current[0] = path
        inference.supports = supports if path == "inference" else (lambda maps: False)
        return [model([image])[0] for image in images]

    try:
        with torch.inference_mode():
            model = model.optimize_for_inference(torch.bfloat16 if args.bf16 else torch.float32)
            outputs = {path: run(path) for path in PATHS}
            rounds = interleaved_rounds({path: (lambda p=path: run(p)) for path in PATHS}, args.rounds)
    finally:
        poolers.roi_align_levels, inference.supports = pool, supports
    same = all(
        a["labels"].shape == b["labels"].shape and torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
        for a, b in zip(outputs["crop"], outputs["inference"], strict=True)
    )
    worst = max((a["boxes"] - b["boxes"]).abs().max().item() if a["boxes"].shape == b["boxes"].shape else float("inf")
                for a, b in zip(outputs["crop"], outputs["inference"], strict=True) if len(a["boxes"]))  # fmt: skip
    print(f"{args.weights or 'r50-fpn (seeded weights)'}, {len(images)} image(s) at {args.size} px, "
          f"{'bf16' if args.bf16 else 'fp32'}, {cpu_model()}, {args.threads} threads; detections equal (1e-3 px): "
          f"{same}, largest box difference {worst:.2g} px")  # fmt: skip
    for path in PATHS:
        per_image = 1000 * statistics.median(rounds[path]) / len(images)
        pool_ms = 1000 * statistics.median(pooled[path])
        print(f"  {path:10s} forward {per_image:8.1f} ms/image   RoIAlign {pool_ms:6.2f} ms/call")


if __name__ == "__main__":
    main()
