"""``fpn train --data D``: train a detector into a run folder (config, checkpoints, logs, curves, metrics).

The run config is built from the preset (``--model``, ``--design``; with ``--weights``, the checkpoint's
architecture), then a run config YAML (``--config``), then the flags, then ``key=value`` overrides
(``train.lr=0.02``, ``model.rpn.nms_thresh=0.6``; bare train keys such as ``lr=0.02`` mean ``train.lr``).
Several processes: ``torchrun --nproc_per_node N -m fpn train ...``.

Fine-tuning: ``--weights W`` starts from a detection checkpoint (a run's model.pt or last.pt, or torchvision's
fasterrcnn_resnet50_fpn COCO .pth) on the data's own classes. The run takes the checkpoint's architecture,
norm and frozen stages included (frozen BatchNorm of eps 0 for torchvision's), so --model is refused with it
and --design accepted only when it names the checkpoint's design: a preset or design given beside W would
otherwise silently train mostly from scratch. ``model.*`` overrides still apply over it (e.g.
model.transform.min_size=512), and only the tensors that still fit load. Every tensor whose name and shape fit
loads; the box predictor's rows of classes the checkpoint shares with the data (by name: COCO's "person",
"car", ...) are carried over, the others made afresh; one line says what was loaded, re-made and left out.
A --resume continues from last.pt and never reads W again (the run config keeps it as train.weights).

At the end, beside metrics.json (whose best_score_threshold ``fpn detect`` suggests for the run's weights), the
final val evaluation's plots: pr_curves.png, f1_curve.png, confusion_matrix.png and val_grid.png (see
``fpn.viz.eval_plots``), from the curves.json the run writes.

Augmentation and weight averaging beyond the flips (off unless set, as bare train keys): mosaic=P (four images
on one canvas with probability P, off for the last close_mosaic=0.1 of the run), scale_jitter=S and
translate=T (random scale gain in [1-S, 1+S], shift up to T of the image), hsv=[h,s,v] (colour gains, e.g.
Ultralytics' [0.015,0.7,0.4]), ema=D (a moving average of the weights with decay D, ramped over ema_tau
updates; evaluated at the end and saved as model.pt). Boxes cut by mosaic or a shift are kept with at least
augment_min_visible=0.1 of their area. benchmarks/results/recipe_*.md has what they did at CPU budgets.

Ctrl-C (or SIGTERM) stops after the iteration under way with a checkpoint and prints the command that
resumes; ``--resume`` continues exactly where the run stopped, even after a kill -9. A finished run is left
as it is, unless a larger ``--iters`` / ``--minutes`` extends it: the learning-rate schedule then goes on
from where it was over the added budget (it does not restart).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fpn.config import ModelConfig, to_dict
from fpn.data import strict_loading
from fpn.engine.config import RunConfig, build_run_config
from fpn.engine.distributed import dist_info
from fpn.errors import ConfigError
from fpn.presets import PRESETS, preset

# The budget flags' default, said once: a run config's own budget, else TrainConfig's 12 epochs.
BUDGET_DEFAULT = "default: the run config's budget, 12 epochs if it sets none"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a detector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", help="dataset YAML or built-in name (synthetic); default: the run config's")
    p.add_argument("--model", default=None, help=f"preset: {', '.join(PRESETS)} (default: tiny-fpn)")
    p.add_argument("--design", help="pyramid design (fpn, single-map, hierarchy, ...); default: the preset's")
    p.add_argument("--out", help="run folder (default: runs/<model>[-<design>], numbered if it exists)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, help=f"train for N iterations ({BUDGET_DEFAULT})")
    budget.add_argument("--epochs", type=float, help=f"train for N passes over the training set ({BUDGET_DEFAULT})")
    budget.add_argument(
        "--minutes", type=float, help=f"train for N minutes, the schedule following the clock ({BUDGET_DEFAULT})"
    )
    p.add_argument(
        "--weights",
        metavar="W",
        help="fine-tune from this detection checkpoint (model.pt, last.pt, torchvision's fasterrcnn_resnet50_fpn "
        ".pth): its architecture, the data's classes, shared classes' rows carried over by name; refuses --model "
        "(default: none, start from the preset's initialisation)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out (a larger budget extends it)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the run config's (auto)")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of leaving it out")
    p.add_argument(
        "--tile",
        type=int,
        metavar="SIZE",
        help="train on SIZE px tiles cut on the fly from each image (most centred on an object, some anywhere as "
        "negatives; boxes under train.tile_min_visible=0.5 of their area inside dropped); evaluations during the "
        "run detect the val images in tiles of SIZE px (default: whole images; `fpn anchors` suggests a SIZE)",
    )
    p.add_argument(
        "--config", help="run config YAML (model, train, data), e.g. a RUN/config.yaml (default: none, the preset's)"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="run config overrides, e.g. train.lr=0.02")
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run config the flags describe: preset, then --config, then flags, then overrides."""
    config_file = args.config
    if args.resume and not args.data and config_file is None and not (Path(args.out) / "config.yaml").is_file():
        raise ConfigError(
            f"{args.out}: no run to resume here (no config.yaml); start one with --data D --out {args.out}"
        )
    if args.resume and config_file is None and args.out and (Path(args.out) / "config.yaml").is_file():
        if args.model or args.design:
            raise ConfigError("--model / --design cannot change a resumed run's model; leave them out")
        config_file = str(Path(args.out) / "config.yaml")  # continue with the run's own config
    settings: dict[str, object] = {}
    if args.data:
        settings["data"] = args.data
    for flag in ("iters", "epochs", "minutes"):
        if getattr(args, flag) is not None:
            # One budget replaces the others: --iters 100 must not also stop after the config's 12 epochs.
            settings.update({"train.iters": None, "train.epochs": None, "train.minutes": None})
            settings[f"train.{flag}"] = getattr(args, flag)
    if args.device:
        settings["train.device"] = args.device
    if args.strict:
        settings["train.strict"] = True
    if args.tile is not None:
        settings["train.tile"] = args.tile
    if args.design:
        settings["model.pyramid.design"] = args.design
    if not args.data and config_file is None:
        raise ConfigError("--data is required (a dataset YAML or 'synthetic'), or a --config that names one")
    if args.weights:
        settings["train.weights"] = weights_source(args.weights)
    if args.weights and not args.resume:
        model = finetuned_model(args)
    else:
        model = preset(args.model or "tiny-fpn", design=args.design)
    base = {"model": to_dict(model)}
    return build_run_config(base, config_file=config_file, settings=settings, overrides=list(args.overrides))


def weights_source(weights: str) -> str:
    """A local file as an absolute path, so that a run restarted from another folder finds it; URLs as given."""
    return weights if weights.startswith(("http://", "https://")) else os.path.abspath(weights)


def finetuned_model(args: argparse.Namespace) -> ModelConfig:
    """The checkpoint's architecture, refusing a --model or --design that contradicts it."""
    from fpn.detection.finetune import checkpoint_model_config

    if args.model:
        raise ConfigError(
            f"{args.weights}: --model cannot be combined with --weights, the run takes the checkpoint's "
            "architecture; leave --model out"
        )
    model = checkpoint_model_config(args.weights)
    if args.design and args.design != model.pyramid.design:
        raise ConfigError(
            f"{args.weights}: --design {args.design} contradicts the checkpoint's design "
            f"'{model.pyramid.design}'; leave --design out"
        )
    return model


def first_free(folder: Path) -> Path:
    """``folder`` if it does not exist yet, else the first free ``folder-2``, ``folder-3``, ..."""
    out, number = folder, 2
    while out.exists():
        out, number = folder.with_name(f"{folder.name}-{number}"), number + 1
    return out


def default_out(args: argparse.Namespace) -> Path:
    """``runs/<model>[-<design>]`` (fine-tuning: ``runs/<checkpoint>-finetune``), numbered if it exists."""
    if args.weights and not args.model:
        return first_free(Path("runs") / f"{Path(args.weights).stem}-finetune")
    return first_free(Path("runs") / ((args.model or "tiny-fpn") + (f"-{args.design}" if args.design else "")))


def run(args: argparse.Namespace) -> int:
    from fpn.engine.stop import TrainingInterrupted, exit_status, resume_command
    from fpn.engine.train import train

    if args.resume and not args.out:
        raise ConfigError("--resume needs --out, the run folder to continue")
    config = build_config(args)
    out = Path(args.out) if args.out else default_out(args)
    info = dist_info()
    try:
        with strict_loading(config.train.strict):  # reaches the datasets train() loads
            model_path = train(config, out, resume=args.resume, progress=sys.stderr.isatty())
    except TrainingInterrupted as stopped:  # the first Ctrl-C / SIGTERM: last.pt holds the iteration just done
        if info.is_main:
            line = f"fpn: interrupted at iteration {stopped.iteration}; resume with: {stopped.resume_command()}"
            print(line, file=sys.stderr)
        return exit_status(stopped)
    except KeyboardInterrupt as stopped:  # a second Ctrl-C / SIGTERM, or one outside the iterations
        if not (info.is_main and (out / "last.pt").is_file()):
            raise
        print(f"fpn: interrupted; resume with: {resume_command(out, info.world_size)}", file=sys.stderr)
        return exit_status(stopped)
    if info.is_main:
        if model_path.is_file():
            write_run_plots(config, out)
        print(out)
    return 0 if model_path.is_file() or not info.is_main else 1


def write_run_plots(config: RunConfig, out: Path) -> None:
    """The final val evaluation's plots (:mod:`fpn.viz.eval_plots`), drawn into the run folder from the
    curves.json the run wrote beside metrics.json (the engine computes, it does not draw)."""
    from fpn.data import load_dataset
    from fpn.engine.eval_curves import load_curves
    from fpn.viz.eval_plots import write_eval_plots

    curves = load_curves(out)
    if curves is not None:
        write_eval_plots(curves, out, load_dataset(config.data, "val"))
