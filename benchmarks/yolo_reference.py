"""YOLOv8n from ``yolov8n.yaml`` (no pretrained weights), trained and measured by Ultralytics itself.

Run in a throwaway venv with ``ultralytics`` (never a project dependency), by ``benchmarks/yolo_compare.py``:

    $R/bin/python benchmarks/yolo_reference.py --data DIR/data.yaml --minutes 5 --threads 2 --imgsz 320 --out DIR

Training: ``YOLO("yolov8n.yaml").train(time=minutes / 60, ...)`` on the CPU with ``workers=0`` (the loading is
done in the training process, as fpn's ``train.workers=0`` run does; Ultralytics forces 0 on the CPU anyway),
``val=False`` (Ultralytics then validates once, at the end) and no plots (they would fetch a font).
Ultralytics stops at the time budget by itself.

Then, from ``last.pt``:
- ``detections.json``: every val image's detections at ``conf=0.001``, ``iou=0.7``, ``max_det=100``
  (Ultralytics' own validation settings), as ``{file_name, category_index, bbox [x, y, w, h], score}``;
- ``latency.json``: ``model.predict`` on decoded images (BGR arrays, as Ultralytics takes them), batch 1,
  pre- and post-processing included, median over rounds of the first ``--images`` val images.

With ``--serve`` it trains nothing: it loads ``last.pt`` from ``--out``, warms up, then times one round per line
read from stdin and prints its ms per image, so that ``yolo_compare.py`` can alternate its rounds with fpn's
(the machine's speed drifts by more than the difference being measured).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def val_images(data: Path) -> list[Path]:
    import yaml

    spec = yaml.safe_load(data.read_text())
    root = Path(spec.get("path") or data.parent)
    folder = root / spec["val"]
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def bgr_arrays(paths: list[Path]) -> list[np.ndarray]:
    """Decoded images as Ultralytics takes them (BGR, H x W x 3)."""
    return [np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1]) for p in paths]


def one_round(model, arrays: list[np.ndarray], imgsz: int) -> float:
    """Seconds per image of one pass of batch-1 predictions over ``arrays``."""
    tick = time.perf_counter()
    for array in arrays:
        model.predict(array, imgsz=imgsz, device="cpu", verbose=False)
    return (time.perf_counter() - tick) / len(arrays)


def warmed_up_arrays(model, paths: list[Path], args: argparse.Namespace) -> list[np.ndarray]:
    """The first ``--images`` val images decoded, after three untimed predictions on them."""
    arrays = bgr_arrays(paths[: args.images])
    for array in arrays[:3]:
        model.predict(array, imgsz=args.imgsz, device="cpu", verbose=False)
    return arrays


def serve_rounds(model, paths: list[Path], args: argparse.Namespace) -> None:
    """One timed round per line of stdin, its ms per image printed (one line each) until stdin closes."""
    arrays = warmed_up_arrays(model, paths, args)
    print("ready", flush=True)
    for _ in sys.stdin:
        print(f"{1000 * one_round(model, arrays, args.imgsz):.4f}", flush=True)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its ended loader processes."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--serve", action="store_true", help="time rounds on request (see the module's notes)")
    args = parser.parse_args()
    args.out = args.out.resolve()  # Ultralytics files a relative project under its own runs folder
    torch.set_num_threads(args.threads)
    from ultralytics import YOLO, __version__
    from ultralytics.utils import torch_utils

    # Ultralytics' device selection (in train and in predict) sets torch's threads to its NUM_THREADS,
    # cpu_count - 1: one thread on a 2-core machine whatever OMP_NUM_THREADS says. Give it the threads fpn has.
    torch_utils.NUM_THREADS = args.threads

    if args.serve:
        serve_rounds(YOLO(str(args.out / "train" / "weights" / "last.pt")), val_images(args.data), args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    start, before = time.perf_counter(), cpu_seconds()
    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(args.data), time=args.minutes / 60, epochs=1000, imgsz=args.imgsz, batch=args.batch,
        workers=0, device="cpu", seed=args.seed, pretrained=False, amp=False, plots=False, val=False,
        project=str(args.out), name="train", exist_ok=True, verbose=False,
    )  # fmt: skip
    train = {
        "wall_s": time.perf_counter() - start,
        "cpu_s": cpu_seconds() - before,
        "torch_threads": torch.get_num_threads(),
        "epochs": int(getattr(model.trainer, "epoch", -1)) + 1,
        "ultralytics": __version__,
        "torch": torch.__version__,
    }
    trained = YOLO(str(args.out / "train" / "weights" / "last.pt"))
    detections = []
    paths = val_images(args.data)
    for path in paths:
        result = trained.predict(str(path), imgsz=args.imgsz, conf=0.001, iou=0.7, max_det=100, device="cpu",
                                 verbose=False)[0]  # fmt: skip
        for (x0, y0, x1, y1), score, cls in zip(
            result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), result.boxes.cls.tolist(), strict=True
        ):
            detections.append({"file_name": path.name, "category_index": int(cls),
                               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})  # fmt: skip
    (args.out / "detections.json").write_text(json.dumps(detections) + "\n")

    arrays = warmed_up_arrays(trained, paths, args)
    rounds = [one_round(trained, arrays, args.imgsz) for _ in range(args.rounds)]
    latency = {"ms_per_image": 1000 * statistics.median(rounds), "rounds_ms": [1000 * r for r in rounds],
               "images": len(arrays), "threads": args.threads, "imgsz": args.imgsz}  # fmt: skip
    (args.out / "latency.json").write_text(json.dumps({"train": train, "latency": latency}, indent=1) + "\n")
    print(json.dumps({"train": train, "latency": latency}))


if __name__ == "__main__":
    main()
