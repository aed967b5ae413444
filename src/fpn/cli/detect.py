"""``fpn detect SOURCE... --weights W``: detections for images, folders or globs, as JSON and pictures.

The JSON (--output) lists every image processed, the detections (COCO results format, plus file_name,
category and pyramid level) and the inputs skipped; its format is described in ``fpn.engine.inference``.
Inputs that cannot be processed (unreadable, too thin for the model) are skipped with a line naming each;
when none can be, that is an error (exit status 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from fpn.cli.options import add_score_thresh
from fpn.data.images import list_images
from fpn.detection.checkpoint import load_detector
from fpn.device import resolve_device
from fpn.engine.inference import detect_files, results_json
from fpn.errors import DataError
from fpn.io import atomic_write_text, check_writable
from fpn.viz.draw import draw_detections
from fpn.viz.save import save_picture


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect objects in images", description=__doc__)
    p.add_argument("sources", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True, help="checkpoint: RUN/model.pt or torchvision's fasterrcnn .pth")
    p.add_argument(
        "--output", default="detections.json", help="JSON: images, detections, skipped inputs (default: %(default)s)"
    )
    p.add_argument("--save-images", metavar="DIR", help="write each image with its detections drawn")
    add_score_thresh(p, "keep detections at least this confident (default: %(default)s)")
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
    # Outputs first: a path that cannot be written must not cost the whole inference.
    check_writable(args.output)
    out_dir = check_writable(args.save_images, folder=True) if args.save_images else None
    device = resolve_device(args.device)
    paths = list_images(args.sources)
    model, _ = load_detector(args.weights)
    summaries, records, failed, used = [], [], [], set()
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
        summaries.append(result.summary())
        if result.error:
            failed.append(result.error)
            if len(paths) > 1:  # a lone input's problem is the error itself, below
                tqdm.write(f"fpn: skipped {result.error}", file=sys.stderr)
            continue
        records.extend(result.records)
        if out_dir:
            drawn = draw_detections(result.image, result.detections, model.config.class_names, colour_by=args.colour_by)
            save_picture(drawn, picture_path(out_dir, result.file_name, used), quality=92)
    bar.close()
    done = len(paths) - len(failed)
    if not done:
        raise nothing_processed(failed)
    atomic_write_text(results_json(summaries, records), args.output)
    print(
        f"{done} image(s), {len(records)} detection(s) -> {args.output}"
        + (f"; {len(failed)} skipped" if failed else "")
    )
    return 0


def nothing_processed(failed: list[str]) -> DataError:
    """The error when no input could be processed: a lone input's own problem, or how many (each named above)."""
    if len(failed) == 1:
        return DataError(failed[0])
    return DataError(f"none of the {len(failed)} images could be processed (each is named above)")


def picture_path(out_dir: Path, file_name: str, used: set[str]) -> Path:
    """``out_dir/<file_name's folders>/<stem>.jpg``, the inputs' layout; ``<stem>_<ext>.jpg`` / ``<stem>_2.jpg``
    when an earlier image took that name (``a.png`` and ``a.jpg`` side by side)."""
    source = Path(file_name)
    candidates = [source.stem, f"{source.stem}_{source.suffix.lstrip('.').lower()}"]
    candidates += [f"{source.stem}_{n}" for n in range(2, len(used) + 3)]
    name = next(str(source.parent / c) for c in candidates if str(source.parent / c) not in used)
    used.add(name)
    return out_dir / f"{name}.jpg"
