"""What ``fpn bench`` measures: :class:`BenchOptions`, checked before any work, and the size syntax."""

from __future__ import annotations

from dataclasses import dataclass

from fpn.errors import ConfigError

MODES = ("infer", "train")
PRECISIONS = ("fp32", "bf16")


@dataclass
class BenchOptions:
    """What to measure; the defaults are ``fpn bench``'s."""

    model: str = "r50-fpn"  # preset name (ignored when weights is set)
    weights: str | None = None  # checkpoint: the project's format or torchvision's layout
    design: str | None = None  # another pyramid design for the preset
    size: tuple[int, int] | None = None  # (height, width) the network sees; None: the model's test size
    threads: int | None = None  # intra-op threads; None: torch's current setting
    mode: str = "infer"
    precision: str = "fp32"  # bf16: weights cast to bf16 (optimized inference) or torch.autocast (--exact, train)
    batch: int | None = None  # images per iteration; None: 1 for infer, 2 for train
    runs: int = 5
    warmup: int = 1
    device: str = "auto"
    scaling: bool = False
    layers: bool = False  # also time every dense layer call alone: the layer ceiling (fpn.bench.layer_ceiling)
    memory: bool = True  # measure peak memory (a subprocess on the CPU)
    peak_gflops: float | None = None  # a known peak rate (GFLOP/s): skips measuring it
    peak_scale: float = 1.0  # linear size of the peak kernels relative to the defaults (tests shrink them)
    seed: int = 0
    exact: bool = False  # infer: skip optimize_for_inference (BN folding, channels-last); train: stay NCHW

    def validate(self) -> None:
        """Reject values no measurement can use, naming the option."""
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        for name, low in (("runs", 1), ("warmup", 0), ("batch", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"--{name} must be at least {low}; got {value}")
        if self.size is not None and min(self.size) < 32:
            raise ConfigError(f"--size must be at least 32 pixels on each side; got {format_size(self.size)}")
        if self.peak_gflops is not None and not self.peak_gflops > 0:
            raise ConfigError(f"--peak-gflops must be positive; got {self.peak_gflops}")
        if self.weights is not None and self.design is not None:
            raise ConfigError("--design applies to presets; a checkpoint's design is fixed by its config")

    @property
    def iteration_batch(self) -> int:
        return self.batch if self.batch is not None else (1 if self.mode == "infer" else 2)


def parse_size(text: str) -> tuple[int, int]:
    """``"800x1216"`` -> ``(800, 1216)`` (height x width)."""
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--size must be HEIGHTxWIDTH in pixels, e.g. 800x1216; got {text!r}") from None
    return height, width


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
