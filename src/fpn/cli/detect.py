"""``fpn detect SOURCE... --weights W``: detections for images, folders or globs, as JSON and pictures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from fpn.checkpoints import atomic_write_text, load_detector
from fpn.data.images import list_images
from fpn.detect import detect_files
from fpn.engine.distributed import resolve_device
from fpn.viz.draw import draw_detections


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect objects in images", description=__doc__)
    p.add_argument("sources", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True, help="checkpoint: RUN/model.pt or torchvision's fasterrcnn .pth")
    p.add_argument("--output", default="detections.json", help="JSON list of detections (default: %(default)s)")
    p.add_argument("--save-images", metavar="DIR", help="write each image with its detections drawn")
    p.add_argument("--score-thresh", type=float, default=0.5, help="keep detections at least this confident")
    p.add_argument("--colour-by", choices=("class", "level"), default="class", help="box colours in pictures")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: bfloat16 weights and maps, about 2x faster on CPUs with bf16 instructions and on recent GPUs; "
        "detections close to fp32's but not identical (default: %(default)s)",
    )
    p.add_argument(
        "--direct-conv",
        action="store_true",
        help="fp32 without Winograd: wide 3x3 convolutions computed directly (slower; results equal the unoptimized "
        "model's to float rounding instead of within ~1e-5 of a map's range)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    paths = list_images(args.sources)
    model, _ = load_detector(args.weights)
    out_dir = Path(args.save_images) if args.save_images else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    records, failed, used = [], [], set()
    bar = tqdm(total=len(paths), unit="img", desc="detect", disable=not sys.stderr.isatty())
    for result in detect_files(
        model,
        paths,
        device=device,
        score_thresh=args.score_thresh,
        dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32,
        winograd=not args.direct_conv,
    ):
        bar.update()
        if result.error:
            failed.append(result.error)
            tqdm.write(f"fpn: skipped {result.error}", file=sys.stderr)
            continue
        records.extend(result.records)
        if out_dir:
            drawn = draw_detections(result.image, result.detections, model.config.class_names, colour_by=args.colour_by)
            drawn.save(picture_path(out_dir, result.path, used), quality=92)
    bar.close()
    # One detection per line: readable, diffable, and still a single JSON list.
    atomic_write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", args.output)
    done = len(paths) - len(failed)
    print(
        f"{done} image(s), {len(records)} detection(s) -> {args.output}"
        + (f"; {len(failed)} skipped" if failed else "")
    )
    return 0 if done else 1


def picture_path(out_dir: Path, source: Path, used: set[str]) -> Path:
    """``out_dir/<stem>.jpg``, or ``<stem>_<ext>.jpg`` / ``<stem>_2.jpg`` when an earlier image took that name."""
    candidates = [source.stem, f"{source.stem}_{source.suffix.lstrip('.').lower()}"]
    candidates += [f"{source.stem}_{n}" for n in range(2, len(used) + 3)]
    name = next(c for c in candidates if c not in used)
    used.add(name)
    return out_dir / f"{name}.jpg"
