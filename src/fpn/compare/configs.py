"""The run configs of a comparison (:func:`fpn.compare.compare`): the one every design shares, each design's,
and the check that a run folder to be reused holds a run of the same config.

* :func:`compare_config`: the preset, the demo's train settings, the budget (:data:`DEFAULT_ITERS` iterations
  unless told), the seed, then ``key=value`` overrides (anything but the design);
* :func:`check_designs` / :func:`design_config` / :func:`trained_design`: the designs asked for, the shared
  config with one of them, and the design whose training run its weights come from;
* :func:`check_same_run`: a finished or interrupted run folder is reused only when its ``config.yaml`` is
  the run config wanted (class names and bookkeeping settings aside).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpn.config import DESIGNS, to_dict
from fpn.engine.config import DEMO_TRAIN, RunConfig, build_run_config
from fpn.errors import ConfigError
from fpn.presets import preset

#: Iterations per design by default (batch 2, the demo's cosine schedule, compressed): the whole comparison of
#: tiny-fpn on the synthetic set must take at most 20 minutes on a 2-core CPU, training being most of it.
DEFAULT_ITERS = 600
# Train settings that do not change what a run computes: a finished run may differ in these and still count.
_BOOKKEEPING = ("eval_every", "checkpoint_every", "log_every", "workers", "device")


# ------------------------------------------------------------------------------------------- configs


def compare_config(
    *,
    data: str = "synthetic",
    model_preset: str = "tiny-fpn",
    iters: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The run config every design shares: the preset, the demo's train settings, the budget, then overrides.

    Without ``iters`` and ``minutes`` the budget is :data:`DEFAULT_ITERS` iterations. ``minutes`` alone makes
    the schedule follow the clock, so cheaper designs get more iterations (and runs do not repeat exactly).
    """

    for item in overrides:
        if item.partition("=")[0].strip() in ("model.pyramid.design", "design"):
            raise ConfigError(f"override {item!r}: the design is what compare varies; list designs instead")
    if iters is None and minutes is None:
        iters = DEFAULT_ITERS
    train_settings = {**DEMO_TRAIN, "iters": iters, "epochs": None, "minutes": minutes, "seed": seed}
    base = {"model": to_dict(preset(model_preset)), "train": train_settings, "data": data}
    config = build_run_config(base, overrides=list(overrides))
    config.validate()
    return config


def check_designs(designs: Sequence[str]) -> list[str]:
    """The designs as a list, each known and listed once."""
    designs = list(designs)
    if not designs:
        raise ConfigError("designs: none given")
    for design in designs:
        if design not in DESIGNS:
            raise ConfigError(f"unknown design {design!r}; available: {', '.join(DESIGNS)}")
    if len(set(designs)) != len(designs):
        raise ConfigError(f"designs: listed more than once: {', '.join(designs)}")
    return designs


def design_config(shared: RunConfig, design: str) -> RunConfig:
    """A copy of the shared config with ``design``."""
    config = RunConfig.from_dict(shared.to_dict())
    config.model.pyramid.design = design
    return config


def trained_design(design: str) -> str:
    """The design whose training run a design's weights come from (image-pyramid: single-map's)."""
    return "single-map" if design == "image-pyramid" else design


# ------------------------------------------------------------------------------------------ reuse


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_run(run_dir: Path, expected: RunConfig) -> None:
    """Refuse to reuse a run folder trained with another config (class names and bookkeeping aside)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: holds a checkpoint but no config.yaml; not a run of this comparison")
    saved, wanted = _flat(RunConfig.load(path).to_dict()), _flat(expected.to_dict())
    ignored = {"model.class_names", "model.category_ids", *(f"train.{k}" for k in _BOOKKEEPING)}
    differences = [
        f"{key} {saved.get(key)!r} (wanted {wanted.get(key)!r})"
        for key in sorted(set(saved) | set(wanted))
        if key not in ignored and saved.get(key) != wanted.get(key)
    ]
    if differences:
        raise ConfigError(
            f"{run_dir}: trained with another run config ({'; '.join(differences[:3])}); use another output folder"
        )
