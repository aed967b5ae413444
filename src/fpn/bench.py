"""How fast a detector runs, what it computes and how much memory it takes: the library behind ``fpn bench``.

:func:`run_bench` builds a detector (a preset with seeded random weights, or a checkpoint), fixes its input
size so that the network sees exactly ``size`` pixels, and times one *iteration* repeatedly after a warm-up:

* ``infer``: one forward pass in eval mode over ``batch`` images (``torch.inference_mode``);
* ``train``: one training step over ``batch`` images with synthetic targets: forward (losses), backward and an
  SGD step. The learning rate is 0 (momentum and weight decay still run), so every step computes on the
  same weights and the same sampled anchors and RoIs: the workload does not drift during the measurement.

Reported: the median and spread (min, max, IQR) of the iteration times, images per second, the median time
of each stage, the GFLOPs of one iteration and the achieved GFLOP/s set against this machine's measured peak,
the peak memory, and optionally how the time scales with the image size and the number of proposals.

Stages are timed by forward hooks on the detector's parts (and a temporary wrapper around
``transform.postprocess``), i.e. around the very calls ``FasterRCNN.forward`` makes; the model is not
modified. ``transform`` is normalising, resizing and padding, ``backbone`` the bottom-up ResNet, ``pyramid``
the design's P-levels, ``rpn`` anchors + head + proposal filtering (+ its losses in training), ``roi_heads``
RoIAlign + box head + per-class NMS (+ losses), ``postprocess`` the rescaling to the user's pixels; in
training ``backward`` and ``optimizer`` (zero_grad + SGD step) follow. The stages are disjoint intervals
inside one iteration, so their sum is at most the iteration's time (the rest is Python glue).

GFLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one iteration (2 per multiply-add;
convolutions and matrix products only, so NMS, RoIAlign's gathers and element-wise work count nothing; a
training step counts its backward pass too). ``gflops`` is what the model's layers are worth as direct
convolutions (counted with :func:`~fpn.ops.winograd.direct_convolutions`); ``executed_gflops`` is what ran,
fewer where Winograd F(4x4, 3x3) replaced a 3x3 convolution by GEMMs with a quarter of the multiplications.
The peak is the best rate of a few dense kernels at the same thread count (see :func:`measure_peak`), so
``fraction_of_peak`` (``gflops`` over time, the *effective* rate, over the peak) says how the detector compares
with running all of its layers at the machine's best convolution/GEMM rate; above 1 is possible only through
fewer multiplications. ``executed_fraction_of_peak`` is the arithmetic actually done over the peak.

Where the machine's speed drifts (shared hosts: the same kernel can run 3x faster one minute than the next),
a peak measured before the runs says little about the moment of each run. So the best kernel is also timed
right after every timed iteration (``peak_during_runs_gflops_per_s``), and ``paired_fraction_of_peak`` is the
median over iterations of that iteration's effective rate over the peak measured next to it; ``executed_``
likewise. The probe runs outside the timed interval.

With ``layers``, every dense call of one iteration (convolutions, matrix products, their backward) is also
timed alone on fresh inputs of the same layout (:mod:`fpn.layer_ceiling`): the sum is what the iteration would
take if nothing else cost time, and its ``ceiling_fraction_of_peak`` the highest ``fraction_of_peak`` the model
could show here (``paired_ceiling_fraction_of_peak``: the paired fraction over the layers' share of the
iteration, for machines whose speed drifts).

Peak memory, on the CPU, is measured in a fresh subprocess that builds the same model and inputs and runs
one iteration: the resident-set high-water mark during that iteration minus the resident set just before it
(Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``). It counts
everything the iteration adds: activations, gradients and momentum buffers, one-off caches of the kernels. On
CUDA it is the growth of ``torch.cuda.max_memory_allocated`` over one iteration (tensors only).

Timings depend on everything else the machine is doing: compare numbers within one run on one machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fpn.errors import ConfigError
from fpn.layer_ceiling import layer_ceiling
from fpn.measure import count_gflops, eval_size, machine_info, rss_peak_delta_mb
from fpn.ops.winograd import direct_convolutions

logger = logging.getLogger(__name__)

MODES = ("infer", "train")
PRECISIONS = ("fp32", "bf16")
FORWARD_STAGES = ("transform", "backbone", "pyramid", "rpn", "roi_heads")
STAGES = {"infer": (*FORWARD_STAGES, "postprocess"), "train": (*FORWARD_STAGES, "backward", "optimizer")}
# Scaling: image sizes as fractions of the pixels of --size (1.0 is the main measurement), and RPN proposals.
SCALING_PIXEL_FRACTIONS = (0.25, 0.5, 0.75)
SCALING_PROPOSALS = (100, 300, 1000)
# The peak kernels at scale 1: a square GEMM, and the 3x3 256->256 convolution that smooths P2 at 800x1088.
PEAK_GEMM = 2048
PEAK_CONV_MAP = (200, 272)
PEAK_CONV_CHANNELS = 256


# ---------------------------------------------------------------------------------------------------- options


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
    layers: bool = False  # also time every dense layer call alone: the layer ceiling (fpn.layer_ceiling)
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


# ------------------------------------------------------------------------------------------- model and inputs


def build_model(options: BenchOptions) -> tuple[torch.nn.Module, str]:
    """The detector to measure (CPU, eval mode) and a name for it: the preset's, or the checkpoint's path."""
    from fpn.checkpoints import load_detector
    from fpn.detection import FasterRCNN
    from fpn.presets import preset

    if options.weights is not None:
        model, _ = load_detector(options.weights)
        return model, str(options.weights)
    config = preset(options.model, design=options.design)
    torch.manual_seed(options.seed)  # the same random weights in this process and the memory probe
    return FasterRCNN(config).eval(), options.model


def default_size(model: torch.nn.Module) -> tuple[int, int]:
    """The model's test size: shorter side ``min_size[-1]``, 4:3 landscape, longer side capped."""

    return eval_size(model.config)


def fit_input(model: torch.nn.Module, height: int, width: int) -> None:
    """Make the detector's resize keep a ``height x width`` image as it is, so the network sees that size.

    (A scale of exactly 1: shorter side ``min(h, w)``, longer side capped at ``max(h, w)``.)
    """
    shorter, longer = min(height, width), max(height, width)
    model.transform.min_size = [shorter]
    model.transform.max_size = longer
    model.config.transform.min_size = [shorter]
    model.config.transform.max_size = longer


def synthetic_images(count: int, height: int, width: int, *, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic ``[3, H, W]`` images in 0..1: a colour gradient, flat rectangles and ellipses, light noise.

    Structured rather than pure noise so that a trained model finds objects: how many boxes survive the score
    threshold and NMS sets the cost of the RoI heads and of post-processing.
    """
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    images = []
    for _ in range(count):
        corners = torch.rand(4, 3, 1, 1, generator=generator) * 0.6 + 0.2
        image = corners[0] * (1 - ys) * (1 - xs) + corners[1] * (1 - ys) * xs
        image = image + corners[2] * ys * (1 - xs) + corners[3] * ys * xs
        for k in range(12):
            cy, cx, hh, hw = torch.rand(4, generator=generator).tolist()
            hh, hw = 0.03 + 0.25 * hh, 0.03 + 0.25 * hw  # half sizes, as fractions of the image
            colour = torch.rand(3, 1, 1, generator=generator)
            if k % 2:
                mask = ((ys - cy) / hh) ** 2 + ((xs - cx) / hw) ** 2 <= 1
            else:
                mask = ((ys - cy).abs() <= hh) & ((xs - cx).abs() <= hw)
            image = torch.where(mask, colour, image)
        image = image + 0.03 * (torch.rand(3, height, width, generator=generator) - 0.5)
        images.append(image.clamp(0, 1).contiguous())
    return images


def synthetic_targets(
    count: int, height: int, width: int, num_classes: int, *, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Training targets for :func:`synthetic_images`: 3 to 8 boxes of 16 px to half the image, labels 1..K."""
    generator = torch.Generator().manual_seed(seed + 1)
    targets = []
    for _ in range(count):
        n = int(torch.randint(3, 9, (1,), generator=generator))
        limit = max(16.0, min(height, width) / 2)
        sizes = 16 + torch.rand(n, 2, generator=generator) * (limit - 16)  # (w, h)
        x1 = torch.rand(n, generator=generator) * (width - sizes[:, 0])
        y1 = torch.rand(n, generator=generator) * (height - sizes[:, 1])
        boxes = torch.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], dim=1)
        labels = torch.randint(1, max(num_classes, 2), (n,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


# ------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read means the work before it is done (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Per-stage wall time of a detector's iterations, from hooks around the calls its ``forward`` makes.

    Use as a context manager (hooks are installed on entry and removed on exit); :meth:`reset` before each
    iteration, :attr:`totals` after it. A stage that runs several times in one iteration (the image-pyramid
    design runs the detector once per scale) accumulates.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.totals: dict[str, float] = {}
        self._open: dict[str, float] = {}
        self._handles: list[Any] = []

    def reset(self) -> None:
        self.totals = {}
        self._open = {}

    def _start(self, name: str, *_: Any) -> None:
        synchronize(self.device)
        self._open[name] = time.perf_counter()

    def _stop(self, name: str, *_: Any) -> None:
        synchronize(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._open.pop(name)

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time a block as stage ``name`` (backward, optimizer)."""
        self._start(name)
        try:
            yield
        finally:
            self._stop(name)

    def __enter__(self) -> StageTimer:
        for name in FORWARD_STAGES:
            module = getattr(self.model, name)
            self._handles.append(module.register_forward_pre_hook(partial(self._start, name)))
            self._handles.append(module.register_forward_hook(partial(self._stop, name)))
        transform = self.model.transform
        postprocess = transform.postprocess  # the bound method; an instance attribute shadows it until exit

        def timed_postprocess(*args: Any, **kwargs: Any) -> Any:
            with self.measure("postprocess"):
                return postprocess(*args, **kwargs)

        transform.postprocess = timed_postprocess
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        vars(self.model.transform).pop("postprocess", None)


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 on the model's device for bf16; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_precision(options: BenchOptions) -> str:
    """The precision to autocast to: none for an optimized inference model, whose weights are already bf16."""
    return "fp32" if options.mode == "infer" and not options.exact else options.precision


def make_step(
    model: torch.nn.Module,
    mode: str,
    precision: str,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]] | None,
    timer: StageTimer,
    *,
    seed: int = 0,
) -> Callable[[], None]:
    """One iteration of ``mode`` as a function of no arguments (the model is put in the matching mode)."""
    device = images[0].device
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), precision_context(precision, device):
                model(images)

        return infer

    if targets is None:
        raise ValueError("train mode needs targets")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: the update's arithmetic runs, the weights stay the same, so every step has the same workload.
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)

    def train() -> None:
        torch.manual_seed(seed)  # the same sampled anchors and RoIs at every step
        with precision_context(precision, device):
            losses = model(images, targets)
        loss = sum(losses.values())
        with timer.measure("backward"):
            loss.backward()
        with timer.measure("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return train


@dataclass
class Timings:
    """Iteration times (seconds) and each iteration's stage totals."""

    times: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    peak_rates: list[float] = field(default_factory=list)  # GFLOP/s of the peak kernel right after each run
    page_faults: list[int] = field(default_factory=list)  # minor page faults of the process during each run

    def paired_fraction(self, gflops: float) -> float | None:
        """Median over runs of ``gflops / time`` over the peak measured next to that run (None without probes)."""
        if not self.peak_rates:
            return None
        return statistics.median(gflops / t / rate for t, rate in zip(self.times, self.peak_rates))

    def summary(self) -> dict[str, Any]:
        return spread(self.times)

    def stage_medians(self) -> dict[str, float]:
        """Median of each stage over the runs, in pipeline order (a stage absent from a run counts 0 there)."""
        seen = {name for run in self.stages for name in run}
        order = [name for stages in STAGES.values() for name in stages]
        names = sorted(seen, key=lambda name: order.index(name) if name in order else len(order))
        return {name: statistics.median(run.get(name, 0.0) for run in self.stages) for name in names}


def spread(times: list[float]) -> dict[str, Any]:
    """Median, min, max, quartiles and IQR of a list of times (inclusive quartiles; 0 IQR for one run)."""
    if len(times) > 1:
        q25, _, q75 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q25 = q75 = times[0]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "q25_s": q25,
        "q75_s": q75,
        "iqr_s": q75 - q25,
        "times_s": list(times),
    }


def minor_page_faults() -> int | None:
    """The process's minor page faults so far (pages the kernel had to map in), None where unknown."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_runs(
    step: Callable[[], None],
    timer: StageTimer,
    *,
    runs: int,
    warmup: int,
    device: torch.device,
    probe: Callable[[], float] | None = None,
) -> Timings:
    """``warmup`` untimed iterations, then ``runs`` timed ones with their stage totals.

    ``probe`` (optional) returns the machine's current peak rate; it runs after each timed iteration.
    """
    for _ in range(warmup):
        timer.reset()
        step()
    timings = Timings()
    for _ in range(runs):
        timer.reset()
        synchronize(device)
        faults = minor_page_faults()
        start = time.perf_counter()
        step()
        synchronize(device)
        timings.times.append(time.perf_counter() - start)
        if faults is not None:
            timings.page_faults.append(minor_page_faults() - faults)
        timings.stages.append(dict(timer.totals))
        if probe is not None:
            timings.peak_rates.append(probe())
    return timings


# --------------------------------------------------------------------------------------------- peak rate


def peak_kernels(
    precision: str, device: torch.device, scale: float = 1.0
) -> list[tuple[str, float, Callable[[], Any]]]:
    """``(name, flops, run)`` of the dense kernels the peak is taken over.

    A square GEMM and a 3x3 256->256 convolution on a 200x272 map (FPN's P2 smoothing at 800x1088) in NCHW
    and channels-last layout, in fp32, plus the same in bfloat16 when ``precision`` is bf16. ``scale``
    shrinks the GEMM side and the map's sides (for quick tests).
    """
    n = max(64, round(PEAK_GEMM * scale / 64) * 64)
    h, w = (max(8, round(side * scale)) for side in PEAK_CONV_MAP)
    c = PEAK_CONV_CHANNELS
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if precision == "bf16" else [])
    generator = torch.Generator().manual_seed(0)
    kernels = []
    for label, dtype in dtypes:
        a, b = (torch.randn(n, n, generator=generator).to(device, dtype) for _ in range(2))
        kernels.append((f"gemm {n}x{n}x{n} {label}", 2.0 * n**3, partial(torch.mm, a, b)))
        x = torch.randn(1, c, h, w, generator=generator).to(device, dtype)
        weight = (torch.randn(c, c, 3, 3, generator=generator) * 0.02).to(device, dtype)
        conv_flops = 2.0 * c * c * 9 * h * w
        kernels.append((f"conv3x3 {c}->{c} {h}x{w} nchw {label}", conv_flops, partial(F.conv2d, x, weight, padding=1)))
        x_cl, weight_cl = (t.to(memory_format=torch.channels_last) for t in (x, weight))
        name = f"conv3x3 {c}->{c} {h}x{w} channels-last {label}"
        kernels.append((name, conv_flops, partial(F.conv2d, x_cl, weight_cl, padding=1)))
    return kernels


def measure_peak(
    *, precision: str = "fp32", device: torch.device | None = None, scale: float = 1.0, repeats: int = 3
) -> dict[str, Any]:
    """The best GFLOP/s of :func:`peak_kernels` at the current thread count (best of ``repeats`` per kernel)."""
    device = device or torch.device("cpu")
    rates: dict[str, float] = {}
    with torch.inference_mode():
        for name, flops, run in peak_kernels(precision, device, scale):
            run()  # warm-up: allocations and the library's choice of algorithm
            rates[name] = _best_rate(run, flops, repeats, device)
    best_name = max(rates, key=rates.__getitem__)
    return {"gflops_per_s": rates[best_name], "kernel": best_name, "kernels": rates}


def _best_rate(run: Callable[[], Any], flops: float, repeats: int, device: torch.device) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls of ``run``."""
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return flops / max(best, 1e-9) / 1e9


def peak_probe(
    kernel: str, *, precision: str, device: torch.device, scale: float = 1.0, repeats: int = 2
) -> Callable[[], float]:
    """A function returning the current GFLOP/s of the peak kernel named ``kernel`` (best of ``repeats``)."""
    flops, run = next((f, r) for name, f, r in peak_kernels(precision, device, scale) if name == kernel)

    def probe() -> float:
        with torch.inference_mode():
            return _best_rate(run, flops, repeats, device)

    return probe


# ------------------------------------------------------------------------------------------------- memory


@dataclass
class Prepared:
    """A model with its inputs and iteration function, ready to time."""

    model: torch.nn.Module
    name: str
    device: torch.device
    size: tuple[int, int]
    batch: int
    images: list[torch.Tensor]
    targets: list[dict[str, torch.Tensor]] | None
    timer: StageTimer
    step: Callable[[], None]


def prepare(options: BenchOptions, device: torch.device) -> Prepared:
    """Build the model at its input size on ``device``, with inputs and the iteration to time."""
    model, name = build_model(options)
    if options.mode == "infer" and not options.exact:
        # What `fpn detect` runs: same results to rounding in fp32 (parity tests); weights cast once in bf16.
        model.optimize_for_inference(torch.bfloat16 if options.precision == "bf16" else torch.float32)
    elif options.mode == "train" and not options.exact:
        model.use_channels_last()  # what `fpn train` runs (train.channels_last and train.winograd default to true)
        if device.type == "cpu":
            model.use_winograd()
    size = options.size or default_size(model)
    fit_input(model, *size)
    model.to(device)
    batch = options.iteration_batch
    images = [image.to(device) for image in synthetic_images(batch, *size, seed=options.seed)]
    targets = None
    if options.mode == "train":
        targets = synthetic_targets(batch, *size, model.config.num_classes, seed=options.seed)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    timer = StageTimer(model, device)
    step = make_step(model, options.mode, autocast_precision(options), images, targets, timer, seed=options.seed)
    return Prepared(model, name, device, size, batch, images, targets, timer, step)


def _memory_probe(options_json: str) -> None:
    """Entry point of the memory subprocess: print ``{"peak_mb": ..., "method": ...}`` as the last line."""
    data = json.loads(options_json)
    data["size"] = tuple(data["size"]) if data["size"] else None
    options = BenchOptions(**data)
    if options.threads:
        torch.set_num_threads(options.threads)
    prepared = prepare(options, torch.device("cpu"))
    peak_mb, method = rss_peak_delta_mb(prepared.step)
    print(json.dumps({"peak_mb": peak_mb, "method": method}))


def peak_memory(options: BenchOptions, prepared: Prepared) -> tuple[float | None, str]:
    """Peak memory (MB) of one iteration and the method (see the module's docstring)."""
    if prepared.device.type == "cuda":
        device = prepared.device
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        prepared.step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_memory_allocated_delta"
    src = str(Path(__file__).resolve().parents[1])  # the folder holding the fpn package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    if options.threads:
        env["OMP_NUM_THREADS"] = str(options.threads)
    data = asdict(options)
    data.update(device="cpu", size=list(prepared.size), scaling=False, memory=False)
    code = "import sys; from fpn.bench import _memory_probe; _memory_probe(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(data)], capture_output=True, text=True, env=env, check=False
    )
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        return answer["peak_mb"], answer["method"]
    except (IndexError, ValueError, KeyError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        logger.warning("peak memory not measured: the probe process failed (%s)", tail)
        return None, f"failed: {tail[:200]}"


# ------------------------------------------------------------------------------------------------ machine


# -------------------------------------------------------------------------------------------------- bench


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Measure as ``options`` say and return the record that ``fpn bench`` writes as JSON (see the CLI)."""
    from fpn.engine.distributed import resolve_device

    options.validate()
    device = resolve_device(options.device)
    previous = torch.get_num_threads()
    threads = options.threads or previous
    torch.set_num_threads(threads)
    try:
        return _run(options, device, threads)
    finally:
        torch.set_num_threads(previous)


def _run(options: BenchOptions, device: torch.device, threads: int) -> dict[str, Any]:
    load_before = machine_info(device).get("load_average_1m")
    prepared = prepare(options, device)
    logger.info(
        "bench %s: %s, %s, %d image(s) of %s, %d thread(s), %s",
        prepared.name, options.mode, options.precision, prepared.batch, format_size(prepared.size), threads, device,
    )  # fmt: skip
    if options.peak_gflops is not None:
        peak = {"gflops_per_s": float(options.peak_gflops), "kernel": "given", "kernels": {}}
        probe = None
    else:
        peak = measure_peak(precision=options.precision, device=device, scale=options.peak_scale)
        probe = peak_probe(peak["kernel"], precision=options.precision, device=device, scale=options.peak_scale)
    with prepared.timer:
        timings = time_runs(
            prepared.step, prepared.timer, runs=options.runs, warmup=options.warmup, device=device, probe=probe
        )
        executed_gflops = count_gflops(prepared.step)
        gflops = nominal_gflops(prepared.model, prepared.step)
        scaling = _scaling(options, prepared, timings, gflops) if options.scaling else None
        layers = None
        if options.layers:
            layers = layer_ceiling(
                prepared.step,
                iteration_s=timings.summary()["median_s"],
                nominal_gflops=gflops,
                peak_gflops_per_s=peak["gflops_per_s"],
                paired_fraction_of_peak=timings.paired_fraction(gflops),
                synchronize=partial(synchronize, device),
            )
    peak_mb, memory_method = peak_memory(options, prepared) if options.memory else (None, "not measured")

    summary = timings.summary()
    median = summary["median_s"]
    machine = machine_info(device)
    machine["load_average_1m_before"] = load_before
    result: dict[str, Any] = {
        "model": prepared.name,
        "design": prepared.model.config.pyramid.design,
        "weights": options.weights,
        "params": sum(p.numel() for p in prepared.model.parameters()),
        "mode": options.mode,
        "precision": options.precision,
        "optimized": options.mode == "infer" and not options.exact,
        "device": str(device),
        "size": format_size(prepared.size),
        "batch": prepared.batch,
        "threads": threads,
        "runs": options.runs,
        "warmup": options.warmup,
        **summary,
        "s_per_image": median / prepared.batch,
        "images_per_s": prepared.batch / median,
        "stages": timings.stage_medians(),
        "gflops": gflops,
        "gflops_per_s": gflops / median,
        "peak_gflops_per_s": peak["gflops_per_s"],
        "peak_kernel": peak["kernel"],
        "peak_kernels": peak["kernels"],
        "fraction_of_peak": gflops / median / peak["gflops_per_s"],
        "executed_gflops": executed_gflops,
        "executed_gflops_per_s": executed_gflops / median,
        "executed_fraction_of_peak": executed_gflops / median / peak["gflops_per_s"],
        "peak_during_runs_gflops_per_s": timings.peak_rates,
        "paired_fraction_of_peak": timings.paired_fraction(gflops),
        "executed_paired_fraction_of_peak": timings.paired_fraction(executed_gflops),
        "peak_mb": peak_mb,
        "peak_mb_method": memory_method,
        "page_faults_per_iteration": statistics.median(timings.page_faults) if timings.page_faults else None,
        "machine": machine,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if scaling is not None:
        result["scaling"] = scaling
    if layers is not None:
        result["layers"] = layers
    return result


def nominal_gflops(model: torch.nn.Module, step: Callable[[], None]) -> float:
    """GFLOPs of one ``step`` with every layer counted as the model defines it (Winograd as a direct convolution)."""
    with direct_convolutions(model):
        return count_gflops(step)


def _scaling(options: BenchOptions, prepared: Prepared, main: Timings, main_gflops: float) -> dict[str, Any]:
    """Time against image size (same aspect, fractions of the pixels) and against the number of proposals."""
    model, device, (height, width) = prepared.model, prepared.device, prepared.size

    def measure(size: tuple[int, int]) -> tuple[Timings, float]:
        fit_input(model, *size)
        images = [im.to(device) for im in synthetic_images(prepared.batch, *size, seed=options.seed)]
        targets = None
        if options.mode == "train":
            targets = synthetic_targets(prepared.batch, *size, model.config.num_classes, seed=options.seed)
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        step = make_step(
            model, options.mode, autocast_precision(options), images, targets, prepared.timer, seed=options.seed
        )
        timings = time_runs(step, prepared.timer, runs=options.runs, warmup=options.warmup, device=device)
        return timings, nominal_gflops(model, step)

    # Smaller sizes are multiples of the padding stride: the network computes on the padded size, and two sizes
    # that pad to the same one would measure the same thing twice.
    stride = model.transform.size_divisible
    sizes = []
    for fraction in SCALING_PIXEL_FRACTIONS:
        size = tuple(max(stride, stride * round(side * math.sqrt(fraction) / stride)) for side in (height, width))
        if size not in sizes and size[0] * size[1] < height * width:
            sizes.append(size)
    points = []
    for size in [*sizes, (height, width)]:
        timings, gflops = (main, main_gflops) if size == (height, width) else measure(size)
        megapixels = size[0] * size[1] * prepared.batch / 1e6  # pixels of one iteration
        median = timings.summary()["median_s"]
        points.append(
            {
                "size": format_size(size),
                "megapixels": megapixels,
                "median_s": median,
                "s_per_megapixel": median / megapixels,
                "gflops": gflops,
                "gflops_per_megapixel": gflops / megapixels,
            }
        )
    fit_input(model, height, width)

    key = "post_nms_top_n_test" if options.mode == "infer" else "post_nms_top_n_train"
    rpn_config = model.config.rpn
    original = getattr(rpn_config, key)
    proposals = []
    try:
        for n in SCALING_PROPOSALS:
            setattr(rpn_config, key, n)
            timings, gflops = measure((height, width))
            stages = timings.stage_medians()
            proposals.append(
                {
                    "post_nms_top_n": n,
                    "median_s": timings.summary()["median_s"],
                    "rpn_s": stages.get("rpn"),
                    "roi_heads_s": stages.get("roi_heads"),
                    "gflops": gflops,
                }
            )
    finally:
        setattr(rpn_config, key, original)
    return {"sizes": points, "size_fit": linear_fit(points), "proposals": proposals, "proposals_key": f"rpn.{key}"}


def linear_fit(points: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares ``time = fixed_s + s_per_megapixel * megapixels`` over the size points."""
    xs = [p["megapixels"] for p in points]
    ys = [p["median_s"] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    return {"fixed_s": mean_y - slope * mean_x, "s_per_megapixel": slope}
