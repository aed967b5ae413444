"""fpn's tiled r50 against SAHI slicing the same image for torchvision's ``fasterrcnn_resnet50_fpn``.

    .venv/bin/python benchmarks/sahi_compare.py --ref-python /tmp/ref/refvenv/bin/python --rounds 3

The reference venv needs torch, torchvision and sahi (``pip install torch==2.14.1 torchvision==0.29.1 sahi``):
it is a throwaway venv, never fpn's. Both sides run the same weights (torchvision's r50 with the parity goldens'
deterministic weights, frozen BN eps 0: ``benchmarks/sahi_reference.py`` writes them), on the same drawn
2,048 x 2,048 scene (``tools/reference/drawn_photos.py``), with 512 px tiles overlapping by 0.2, score threshold
0.05, tiles only (no full-image pass), each side's default merging (SAHI: GREEDYNMM on IoS 0.5; fpn: greedy
on IoS 0.5), 2 threads each.

* Same detections per tile: fpn runs SAHI's own slices (``run_tiles`` on SAHI's grid) and each slice's
  detections are compared with torchvision's on it: count, labels, largest box and score difference.
* End to end: ``sahi.predict.get_sliced_prediction(path)`` against ``fpn.detect(path, tile=...)`` (reading
  the file, tiling, the model, merging), in alternating rounds (SAHI in a fresh process each round, timed
  inside it after a one-slice warm-up; fpn in this process after one warm-up image), median over rounds.
  The two grids cover the image with the same number of tiles (25 at this size), counted and reported.

Writes a Markdown report with the CPU model, the machine's load and the commands to ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from fpn.detection.checkpoint import load_detector
from fpn.engine.inference import detect
from fpn.engine.tiling import TileOptions, run_tiles, tile_grid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "reference"))
from drawn_photos import draw_photo  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from tiling import cpu_model  # noqa: E402


def per_tile_agreement(model, image: torch.Tensor, reference: dict, score_thresh: float) -> dict:
    """fpn on SAHI's slices against torchvision's detections on them, slice by slice."""
    slices = reference["slices"]
    with torch.inference_mode():
        found = run_tiles(model, image, slices, batch=4)
    worst_box = worst_score = 0.0
    same_count = same_labels = 0
    for tile, theirs in zip(slices, reference["per_tile"]):
        mine = (found["tiles"] == tile).all(dim=1) & (found["scores"] >= score_thresh)
        boxes = found["boxes"][mine] - tile[:2].to(found["boxes"].dtype).repeat(2)
        scores, labels = found["scores"][mine], found["labels"][mine]
        order = scores.argsort(descending=True)
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        if len(scores) != len(theirs["scores"]):
            continue
        same_count += 1
        if torch.equal(labels, theirs["labels"]):
            same_labels += 1
            if len(scores):
                worst_box = max(worst_box, float((boxes - theirs["boxes"]).abs().max()))
                worst_score = max(worst_score, float((scores - theirs["scores"]).abs().max()))
    return {
        "tiles": len(slices),
        "same_count": same_count,
        "same_labels": same_labels,
        "detections": int(sum(len(t["scores"]) for t in reference["per_tile"])),
        "max_box_diff_px": worst_box,
        "max_score_diff": worst_score,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-python", default="/tmp/ref/refvenv/bin/python")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fpn_sahi_compare"))
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    scene, weights, ref = args.work / "scene.png", args.work / "tv_r50.pth", args.work / "ref.pt"
    image = draw_photo(args.size, args.size, 7, shapes=600)
    if not scene.exists():
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(scene)
    common = ["--image", str(scene), "--weights", str(weights), "--tile", str(args.tile)]
    common += ["--overlap", str(args.overlap), "--score-thresh", str(args.score_thresh)]
    reference_script = str(REPO / "benchmarks" / "sahi_reference.py")
    if not ref.exists():
        subprocess.run([args.ref_python, reference_script, "prepare", *common, "--out", str(ref)], check=True)
    reference = torch.load(ref, weights_only=True)

    model, _ = load_detector(weights)
    options = TileOptions(args.tile, args.overlap)
    ours_tiles = len(tile_grid(args.size, args.size, args.tile, args.overlap))
    warm = list(detect(model, [scene], score_thresh=args.score_thresh, tile=options))  # optimizes the model once
    agreement = per_tile_agreement(model, image, reference, args.score_thresh)

    sahi_s, fpn_s, sahi_split = [], [], []
    for _ in range(args.rounds):
        out = args.work / "round.json"
        subprocess.run([args.ref_python, reference_script, "time", *common, "--out", str(out)], check=True)
        result = json.loads(out.read_text())
        sahi_s.append(result["seconds"])
        sahi_split.append(result["durations"])
        start = time.perf_counter()
        fpn_result = list(detect(model, [scene], score_thresh=args.score_thresh, tile=options))
        fpn_s.append(time.perf_counter() - start)
    sahi_median, fpn_median = statistics.median(sahi_s), statistics.median(fpn_s)
    prediction = statistics.median(split.get("prediction", float("nan")) for split in sahi_split)
    report = {
        "cpu": cpu_model(),
        "load_average": os.getloadavg(),
        "versions": reference["versions"] | {"fpn_torch": torch.__version__},
        "tiles": {"sahi": agreement["tiles"], "fpn": ours_tiles},
        "per_tile": agreement,
        "sahi_seconds": sahi_s,
        "sahi_durations": sahi_split,
        "fpn_seconds": fpn_s,
        "speedup_end_to_end": sahi_median / fpn_median,
        "speedup_vs_sahi_prediction_only": prediction / fpn_median,
        "detections_after_merge": {"sahi": result["detections"], "fpn": len(fpn_result[0].records), "warm": len(warm)},
    }
    text = render(report, args)
    output = args.output or REPO / "benchmarks" / "results" / f"sahi_{datetime.date.today()}.md"
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(text)


def render(report: dict, args) -> str:
    agreement = report["per_tile"]
    sahi, ours = statistics.median(report["sahi_seconds"]), statistics.median(report["fpn_seconds"])
    rows = [
        f"| SAHI + torchvision, one slice at a time | {sahi:.1f} s | 1.00x |",
        f"| fpn detect --tile {args.tile} (batches of 4, optimized fp32) | {ours:.1f} s "
        f"| {report['speedup_end_to_end']:.2f}x |",
    ]
    return "\n".join(
        [
            f"# fpn tiled r50 vs SAHI + torchvision ({datetime.date.today()})",
            "",
            "Command: `.venv/bin/python benchmarks/sahi_compare.py "
            f"--ref-python {args.ref_python} --rounds {args.rounds}`",
            "",
            f"CPU: {report['cpu']}, 2 threads per side; load average at the end {report['load_average']}.",
            f"Versions: {report['versions']}.",
            f"Image {args.size} x {args.size} px, tiles {args.tile} px, overlap {args.overlap}: "
            f"{report['tiles']['sahi']} slices (SAHI) and {report['tiles']['fpn']} tiles (fpn).",
            "",
            "| pipeline (end to end, median of rounds) | time | speed |",
            "| --- | --- | --- |",
            *rows,
            "",
            f"Against SAHI's model time alone (its `prediction` duration, median): "
            f"{report['speedup_vs_sahi_prediction_only']:.2f}x.",
            f"Rounds (s): SAHI {[round(s, 1) for s in report['sahi_seconds']]}, "
            f"fpn {[round(s, 1) for s in report['fpn_seconds']]}.",
            "",
            f"Same detections per tile (fpn run on SAHI's {agreement['tiles']} slices, "
            f"{agreement['detections']} torchvision detections): same count on {agreement['same_count']}, "
            f"same labels in the same order on {agreement['same_labels']}; largest box difference "
            f"{agreement['max_box_diff_px']:.2e} px, largest score difference {agreement['max_score_diff']:.2e}.",
            f"Detections after merging: SAHI {report['detections_after_merge']['sahi']}, "
            f"fpn {report['detections_after_merge']['fpn']} (different grids and merge rules: not expected to match).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
