"""``fpn detect SOURCE... --weights W``: detections for images, folders or globs, as JSON and pictures.

The JSON (--output) lists every image processed, the detections (COCO results format, plus file_name,
category and pyramid level) and the inputs skipped; its format is described in ``fpn.engine.inference``.
Inputs that cannot be processed (unreadable, too thin for the model) are skipped with a line naming each;
when none can be, that is an error (exit status 2) and nothing is written.

Weights with a metrics.json beside them (``fpn train``'s run folder, or ``fpn eval --output``) that names a
best_score_threshold other than --score-thresh get a one-line note saying so; the threshold stays as given.

The checkpoint's settings hold unless changed for this run: --nms-iou, --max-detections, --size and
--max-size, then any model config key with --set KEY=VALUE, as ``fpn train`` takes them
(``--set rpn.post_nms_top_n_test=500``; a leading ``model.`` may be kept). --set is a flag, unlike train's
positional KEY=VALUE, because here positionals are images and a file may well be called ``a=b.jpg``.

--tile PX detects in overlapping tiles of the image's native pixels and merges them (small objects in large
images; see ``fpn.engine.tiling``): ``fpn detect scene.png --weights W --tile 512 --full-image``. Each
detection then records its tile.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from fpn.cli.options import add_score_thresh, add_tile_options, iou, tile_options, whole_number
from fpn.config import ModelConfig
from fpn.data.images import list_images
from fpn.detection.base import OUTPUT_SECTIONS
from fpn.detection.classes import select_labels
from fpn.device import resolve_device
from fpn.engine.eval_curves import best_threshold_beside
from fpn.engine.inference import PRECISIONS, detect_files, precision_dtype, results_json
from fpn.errors import ConfigError, DataError
from fpn.export.runtime import load_model
from fpn.io import atomic_write_text, check_writable
from fpn.viz.draw import draw_detections
from fpn.viz.save import save_picture

# The stride of P5: a shorter side under it would leave the coarse levels' maps less than one cell across.
MIN_SIZE = 32


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect objects in images", description=__doc__)
    p.add_argument("sources", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True, help="checkpoint: RUN/model.pt or torchvision's fasterrcnn .pth")
    p.add_argument(
        "--output", default="detections.json", help="JSON: images, detections, skipped inputs (default: %(default)s)"
    )
    p.add_argument(
        "--save-images", metavar="DIR", help="write each image with its detections drawn (default: no pictures)"
    )
    add_score_thresh(p, "keep detections at least this confident (default: %(default)s)")
    p.add_argument(
        "--classes",
        type=class_list,
        metavar="NAMES",
        help="keep only these classes: names or category ids, comma-separated, e.g. person,car or 1,3 "
        "(default: every class of the model)",
    )
    p.add_argument(
        "--nms-iou",
        type=iou,
        metavar="0..1",
        help="the final class-wise NMS: of two boxes of one class overlapping by more than this IoU, the "
        "lower-scored goes (default: the checkpoint's roi_heads.nms_thresh, or its retinanet. / fcos. one: 0.5, "
        "fcos-r50's 0.6)",
    )
    p.add_argument(
        "--max-detections",
        type=whole_number(1),
        metavar="N",
        help="keep at most N detections per image, the highest-scored "
        "(default: the checkpoint's roi_heads.detections_per_image, or its retinanet. / fcos. one: 100 in r50-fpn, "
        "300 in retinanet-r50)",
    )
    p.add_argument(
        "--size",
        type=whole_number(MIN_SIZE, " px"),
        metavar="PX",
        help="resize each image so that its shorter side is PX, its longer side at most --max-size "
        "(default: the checkpoint's transform.min_size, 800 in r50-fpn)",
    )
    p.add_argument(
        "--max-size",
        type=whole_number(MIN_SIZE, " px"),
        metavar="PX",
        help="the longer side's cap in that resize (default: the checkpoint's transform.max_size, 1333 in r50-fpn)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="a model config override, as fpn train takes it (e.g. roi_heads.score_thresh=0.01); repeat for "
        "more; applied after the flags above (default: none)",
    )
    add_tile_options(p)
    p.add_argument(
        "--colour-by",
        choices=("class", "level"),
        default="class",
        help="box colours in pictures (default: %(default)s)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s: cuda if there is one)")
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
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


def class_list(text: str) -> list[str]:
    """``--classes person,traffic light`` -> ``["person", "traffic light"]`` (checked against the model later)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def model_overrides(args: argparse.Namespace) -> list[str]:
    """The model config overrides this run asks for: the flags' keys, then --set's (so --set has the last word,
    as train's overrides do after its flags)."""
    # Each detector reads its own section (roi_heads, retinanet, fcos), so the flags set all of them.
    flags = {
        f"{section}.{key}": value
        for section in OUTPUT_SECTIONS.values()
        for key, value in (("nms_thresh", args.nms_iou), ("detections_per_image", args.max_detections))
    }
    flags |= {
        "transform.min_size": None if args.size is None else [args.size],
        "transform.max_size": args.max_size,
    }
    overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return overrides + [item.removeprefix("model.") for item in args.overrides or []]


def check_size(config: ModelConfig, args: argparse.Namespace) -> None:
    """Refuse a resize the model would not do as asked, naming the flags, before any image is read."""
    if args.size is not None and config.pyramid.design == "image-pyramid":
        raise ConfigError(
            f"--size: an image-pyramid model runs at each of its test scales ({config.pyramid.test_scales}); "
            "set them with --set pyramid.test_scales=[...]"
        )
    shorter, longer = config.transform.min_size[-1], config.transform.max_size
    if (args.size is None and args.max_size is None) or longer >= shorter:
        return
    size = f"--size {shorter}" if args.size is not None else f"the model's shorter side of {shorter} px"
    cap = f"--max-size {longer}" if args.max_size is not None else f"the model's longer-side cap of {longer} px"
    raise ConfigError(f"{cap} is under {size}, so no image could get that shorter side; raise --max-size")


def run(args: argparse.Namespace) -> int:
    # Outputs first: a path that cannot be written must not cost the whole inference.
    check_writable(args.output)
    out_dir = check_writable(args.save_images, folder=True) if args.save_images else None
    device = resolve_device(args.device)
    tiling = tile_options(args)
    paths = list_images(args.sources)
    # A .onnx file (fpn export) runs in onnxruntime, with the same JSON and pictures.
    model = load_model(args.weights, overrides=model_overrides(args), precision=args.precision)
    check_size(model.config, args)
    if args.classes is not None:
        select_labels(model.config, args.classes, what="--classes")  # an unknown name: said with the flag's name
    print_threshold_hint(args)
    summaries, records, failed, used = [], [], [], set()
    bar = tqdm(total=len(paths), unit="img", desc="detect", disable=not sys.stderr.isatty())
    for result in detect_files(
        model,
        paths,
        device=device,
        score_thresh=args.score_thresh,
        dtype=precision_dtype(args.precision),
        winograd=not args.direct_conv,
        classes=args.classes,
        tiling=tiling,
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


def print_threshold_hint(args: argparse.Namespace) -> None:
    """One line on stderr when the weights' metrics.json found another best-F1 score threshold than the one in
    use: a suggestion, never a silent change of --score-thresh."""
    found = best_threshold_beside(args.weights)
    if found is not None and round(found[0], 2) != round(args.score_thresh, 2):
        print(
            f"fpn: note: the best F1 on the val split ({found[1]}) is at --score-thresh {found[0]:.2f} "
            f"(this run: {args.score_thresh:g})",
            file=sys.stderr,
        )


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
