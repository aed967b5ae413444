"""The SAHI side of ``benchmarks/sahi_compare.py``; runs in a throwaway venv with torchvision and sahi, never in fpn's.

    /tmp/ref/refvenv/bin/python benchmarks/sahi_reference.py prepare --image scene.png --weights tv.pth --out ref.pt
    /tmp/ref/refvenv/bin/python benchmarks/sahi_reference.py time --image scene.png --weights tv.pth --out round.json

``prepare`` writes torchvision ``fasterrcnn_resnet50_fpn``'s weights (deterministic, as the parity goldens':
``tools/reference/deterministic_weights.py``; frozen BN eps 0 as torchvision runs its COCO checkpoint) when
the file is missing, and records SAHI's slice grid with torchvision's detections on every slice, for the
per-tile comparison. ``time`` runs ``sahi.predict.get_sliced_prediction`` once on the image, after one slice
of warm-up, and writes its wall time and SAHI's own split of it (slice, prediction, postprocess).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sahi.models.torchvision import TorchVisionDetectionModel
from sahi.predict import get_sliced_prediction
from sahi.slicing import get_slice_bboxes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "reference"))
from make_realsize_goldens import build_model  # noqa: E402  (torchvision's r50 with the goldens' weights)


def sahi_model(model: torch.nn.Module, score_thresh: float) -> TorchVisionDetectionModel:
    return TorchVisionDetectionModel(
        model=model, confidence_threshold=score_thresh, device="cpu", load_at_init=True, image_size=None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["prepare", "time"])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model()
    if not args.weights.exists():
        torch.save(model.state_dict(), args.weights)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    height, width = image.shape[:2]

    if args.mode == "prepare":
        slices = get_slice_bboxes(height, width, args.tile, args.tile, False, args.overlap, args.overlap)
        per_tile = []
        with torch.inference_mode():
            for x0, y0, x1, y1 in slices:
                crop = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1).float() / 255
                out = model([crop])[0]
                keep = out["scores"] >= args.score_thresh
                per_tile.append({k: out[k][keep].clone() for k in ("boxes", "scores", "labels")})
        versions = {"torch": str(torch.__version__), "sahi": str(__import__("sahi").__version__)}
        versions["torchvision"] = str(__import__("torchvision").__version__)
        torch.save({"slices": torch.tensor(slices), "per_tile": per_tile, "versions": versions}, args.out)
        return

    detector = sahi_model(model, args.score_thresh)
    with torch.inference_mode():
        detector.perform_inference(np.ascontiguousarray(image[: args.tile, : args.tile]))  # warm-up
        start = time.perf_counter()
        result = get_sliced_prediction(
            str(args.image),
            detector,
            slice_height=args.tile,
            slice_width=args.tile,
            overlap_height_ratio=args.overlap,
            overlap_width_ratio=args.overlap,
            perform_standard_pred=False,  # tiles only, as fpn detect --tile without --full-image
            verbose=0,
        )
        seconds = time.perf_counter() - start
    report = {
        "seconds": seconds,
        "durations": result.durations_in_seconds,
        "detections": len(result.object_prediction_list),
    }
    args.out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
