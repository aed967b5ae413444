"""The configuration of a training run: the model, how to train it, and on which data.

A :class:`RunConfig` is saved as ``RUN/config.yaml`` and inside every checkpoint, so a run can be resumed,
repeated or inspected from its folder alone. It round-trips through :func:`fpn.config.to_yaml` /
:func:`fpn.config.from_dict` like every other config, and command-line overrides address it with dotted
keys (``train.lr=0.02``, ``model.rpn.nms_thresh=0.6``, ``data=synthetic``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpn.config import ModelConfig, apply_overrides, from_dict, load_yaml, to_dict, to_yaml
from fpn.data.tiles import check_tile
from fpn.errors import ConfigError
from fpn.presets import preset

SCHEDULES = ("step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
#: Train settings that may change when a run is resumed without changing what it computes so far.
RUNTIME_KEYS = (
    "iters", "epochs", "minutes", "eval_every", "checkpoint_every", "log_every", "workers", "device", "strict",
)  # fmt: skip


@dataclass
class TrainConfig:
    """How to train: budget, optimiser, learning-rate schedule, bookkeeping.

    Budget: the run lasts ``iters`` iterations if set, else ``epochs`` passes over the training set;
    ``minutes`` additionally stops it after that much wall time (counted over all resumed parts). With
    ``minutes`` alone, the schedule advances with elapsed time instead of iterations (such a run cannot be
    repeated exactly). ``batch_size`` is per process: with ``torchrun`` the global batch is
    ``batch_size * world_size``.
    """

    iters: int | None = None
    epochs: float | None = 12.0
    minutes: float | None = None
    batch_size: int = 2  # images per process and iteration
    # Images per forward pass; the local batch's gradients are accumulated over its micro-batches. With 1 (the
    # default) the objective is the mean of per-image losses, so a run does not depend on how its global batch
    # is split across processes; 0 means the whole local batch in one forward pass (faster on a GPU).
    micro_batch: int = 1
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001  # the learning rate starts at lr * warmup_factor and rises linearly to lr
    schedule: str = "step"  # step or cosine
    steps: list[float] = field(default_factory=lambda: [0.667, 0.889])  # fractions of the run ("1x": 60k, 80k of 90k)
    gamma: float = 0.1  # step schedule: factor at each milestone
    grad_clip: float | None = 10.0  # max global gradient norm; null disables clipping
    eval_every: int = 0  # iterations between evaluations on the val split; 0: only at the end
    checkpoint_every: int = 200  # iterations between writes of RUN/last.pt (always written at the end too)
    log_every: int = 20  # iterations between lines of RUN/log.jsonl and TensorBoard points
    seed: int = 0
    workers: int = 2  # data-loading processes per training process
    flip: bool = True  # random horizontal flips
    # The from-scratch recipe (fpn.engine.augmentation, fpn.engine.ema; measured in benchmarks/recipe.py):
    # each is off unless set. Every draw derives from the image's slot key, so a resumed run repeats them.
    mosaic: float = 0.0  # probability that a training image is a mosaic of four (fpn.data.mosaic)
    # The fraction of the run, at its end, without mosaic (YOLO's close_mosaic): of the iterations, or of the
    # time with a --minutes budget, as the learning-rate schedule counts progress.
    close_mosaic: float = 0.1
    scale_jitter: float = 0.0  # random scale gain in [1 - s, 1 + s] on a canvas of the image's size
    translate: float = 0.0  # random shift by up to this fraction of the image's width and height
    hsv: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # hue, saturation, value gains (fpn.data.hsv)
    augment_min_visible: float = 0.1  # a box cut by mosaic or scale/shift is kept with this much of its area left
    # Exponential moving average of the weights with this decay (e.g. 0.9998), ramped up as
    # decay * (1 - exp(-updates / ema_tau)); evaluated at the end and saved as model.pt. null: off.
    ema: float | None = None
    ema_tau: float = 2000.0
    # Mixed precision: fp16 with loss scaling on CUDA, bf16 on a CPU with bf16 instructions (fp32 where neither):
    # faster steps; speed and accuracy: benchmarks/amp_training.py and its committed result.
    amp: bool = False
    channels_last: bool = True  # NHWC weights and maps: faster convolutions; the same results to rounding
    # Winograd F(4x4, 3x3) for the 3x3 convolutions of 128+ channels (fp32 on the CPU): faster, ~1e-5 off
    winograd: bool = True
    device: str = "auto"  # auto, cpu or cuda
    # An unreadable image stops the run with an error naming it, instead of being left out (up front) or
    # skipped (during the run) with a warning; `fpn train --strict` (see fpn.data.scan).
    strict: bool = False
    # A detection checkpoint the run starts from (`fpn train --weights`; fpn.detection.finetune): the tensors
    # whose name and shape fit load, the box predictor's class rows remapped by class name. Applied only when a
    # run starts, never on resume (the run's own checkpoint holds its weights); kept here so that a run says
    # where it started.
    weights: str | None = None
    # Train on tiles of `tile` px cut on the fly from each image (`fpn train --tile`; fpn.data.tiles), boxes cut
    # by a tile's border kept only with at least `tile_min_visible` of their area inside; evaluation during the
    # run then detects the val images in tiles of that size too (fpn.engine.tiling).
    tile: int | None = None
    tile_min_visible: float = 0.5

    def validate(self) -> None:
        """Reject settings no run can use, naming the key."""
        for key in ("iters", "epochs", "minutes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"train.{key} must be positive (or null), got {value}")
        if self.iters is None and self.epochs is None and self.minutes is None:
            raise ConfigError("train: no budget; set one of train.iters, train.epochs or train.minutes")
        for key in ("batch_size", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("micro_batch", "warmup_iters", "eval_every", "workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must not be negative, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0 < self.warmup_factor <= 1:
            raise ConfigError(f"train.warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if any(not 0 < s < 1 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ConfigError(f"train.steps must be increasing fractions of the run in (0, 1), got {self.steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be positive (or null), got {self.grad_clip}")
        if self.device not in DEVICES:
            raise ConfigError(f"train.device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.tile is not None:
            check_tile(self.tile, self.tile_min_visible)
        self._validate_recipe()

    def _validate_recipe(self) -> None:
        for key, low, high in (
            ("mosaic", 0.0, 1.0), ("close_mosaic", 0.0, 1.0), ("translate", 0.0, 0.5), ("augment_min_visible", 0.0, 1.0)
        ):  # fmt: skip
            if not low <= getattr(self, key) <= high:
                raise ConfigError(f"train.{key} must be in [{low:g}, {high:g}], got {getattr(self, key)}")
        if not 0.0 <= self.scale_jitter < 1.0:
            raise ConfigError(f"train.scale_jitter must be in [0, 1), got {self.scale_jitter}")
        if len(self.hsv) != 3 or any(not 0.0 <= g <= 1.0 for g in self.hsv):
            raise ConfigError(f"train.hsv must be three gains in [0, 1] (hue, saturation, value), got {self.hsv}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ConfigError(f"train.ema must be a decay in (0, 1) (or null), got {self.ema}")
        if self.ema_tau <= 0:
            raise ConfigError(f"train.ema_tau must be positive, got {self.ema_tau}")


@dataclass
class RunConfig:
    """A whole training run: ``model`` (class names are filled in from the data), ``train`` and ``data``.

    ``data`` is a dataset YAML path or a built-in name (``synthetic``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str = "synthetic"

    def validate(self) -> None:
        self.train.validate()
        if not self.data:
            raise ConfigError("data: no dataset given (a dataset YAML path or a built-in name)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return to_yaml(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, where: str = "run config") -> RunConfig:
        return from_dict(cls, data, where=where)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a run config YAML (e.g. ``RUN/config.yaml``); missing keys keep their defaults."""
        return cls.from_dict(load_yaml(path), where=str(path))


def resolve_override_keys(overrides: list[str], data: dict[str, Any]) -> list[str]:
    """Turn bare keys into dotted ones: ``lr=0.02`` means ``train.lr=0.02`` (the run config's top keys win).

    Keys that already have a dot, or that no section has, are left alone (and later rejected by name).
    """
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    resolved = []
    for item in overrides:
        key, sep, value = item.partition("=")
        bare = key.strip()
        if sep and "." not in bare and bare not in data and bare in train_keys:
            key = f"train.{bare}"
        resolved.append(f"{key}={value}" if sep else item)
    return resolved


def build_run_config(
    base: dict[str, Any],
    *,
    config_file: str | Path | None = None,
    settings: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """A RunConfig from, in increasing priority: a base dict (e.g. a preset's), a run config YAML merged over
    it, ``settings`` (``{"train.iters": 100}``, from command-line flags), then ``key=value`` strings.

    The YAML may be partial: its mappings are merged key by key into the base. Unknown keys in either raise
    :class:`~fpn.errors.ConfigError` naming the key (and the file).
    """
    data = to_dict(RunConfig.from_dict(base, where="run config"))
    if config_file is not None:
        loaded = load_yaml(config_file)
        RunConfig.from_dict(loaded, where=str(config_file))  # names an unknown key with the file it came from
        _merge(data, loaded)
    for dotted, value in (settings or {}).items():
        *path, leaf = dotted.split(".")
        node = data
        for part in path:
            node = node[part]
        node[leaf] = value
    if overrides:
        apply_overrides(data, resolve_override_keys(list(overrides), data))
    return RunConfig.from_dict(data, where="command line" if overrides else str(config_file or "run config"))


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# ------------------------------------------------------------------------------------ the demo's run

# Calibrated so that the whole demo takes about 5 minutes on a 2-core CPU (see README for the measured AP).
# Tried on this machine (val AP): 600 iterations with multi-scale jitter 6.2; with lr 0.01 / 0.04 instead of
# 0.02, 2.3 / 5.7; batch 4 for 500 iterations 5.7; 800 iterations at one 320 px scale 7.5 (8.4 on a quiet
# machine, 3 min for the whole demo); this setting runs 1200 such iterations.
DEMO_ITERS = 1200
DEMO_SCALE = 320
DEMO_TRAIN = {
    "batch_size": 2,
    "micro_batch": 0,
    "lr": 0.02,
    "warmup_iters": 50,
    "schedule": "cosine",
    "checkpoint_every": 200,
    "log_every": 20,
    "workers": 1,
}


def demo_config(iters: int = DEMO_ITERS, design: str = "fpn") -> RunConfig:
    """``make demo``'s run: tiny-fpn on the synthetic set with the settings above."""
    train = TrainConfig(**DEMO_TRAIN, iters=iters, epochs=None)
    model = preset("tiny-fpn", design=design)
    model.transform.min_size = [DEMO_SCALE]
    return RunConfig(model=model, train=train, data="synthetic")
