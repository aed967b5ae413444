"""The detector to measure, at its input size, with its inputs and the iteration to time.

One *iteration* is

* ``infer``: one forward pass in eval mode over ``batch`` images (``torch.inference_mode``), the model
  optimized as ``fpn detect`` runs it unless ``exact``;
* ``train``: one training step over ``batch`` images with synthetic targets: the training loop's own step
  (:func:`fpn.engine.step.train_step`: forward, losses, backward, gradient norm and clipping, SGD update),
  the model channels-last with Winograd on the CPU as ``fpn train`` runs it unless ``exact``. The learning
  rate is 0 (momentum and weight decay still run), so every step computes on the same weights and the same
  sampled anchors and RoIs: the workload does not drift during the measurement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fpn.bench.inputs import eval_size, fit_input, synthetic_images, synthetic_targets
from fpn.bench.options import BenchOptions
from fpn.bench.timing import StageTimer
from fpn.detection import build_detector, load_detector
from fpn.engine.config import TrainConfig
from fpn.engine.inference import precision_dtype
from fpn.engine.step import train_step
from fpn.presets import preset


def build_model(options: BenchOptions) -> tuple[torch.nn.Module, str]:
    """The detector to measure (CPU, eval mode) and a name for it: the preset's, or the checkpoint's path."""
    if options.weights is not None:
        model, _ = load_detector(options.weights)
        return model, str(options.weights)
    config = preset(options.model, design=options.design)
    torch.manual_seed(options.seed)  # the same random weights in this process and the memory probe
    return build_detector(config).eval(), options.model


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
    defaults = TrainConfig()  # what `fpn train` runs unless told otherwise
    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: the update's arithmetic runs, the weights stay the same, so every step has the same workload.
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=defaults.momentum, weight_decay=defaults.weight_decay)
    amp = torch.bfloat16 if precision == "bf16" else None

    def train() -> None:
        train_step(
            model, optimizer, images, targets,
            amp_dtype=amp, grad_clip=defaults.grad_clip, stage=timer.measure,
            seed=lambda chunk: torch.manual_seed(seed),  # the same sampled anchors and RoIs at every step
        )  # fmt: skip

    return train


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


def make_inputs(
    options: BenchOptions, model: torch.nn.Module, size: tuple[int, int], batch: int, device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None]:
    """``batch`` synthetic images of ``size`` on ``device``, with training targets in train mode."""
    images = [image.to(device) for image in synthetic_images(batch, *size, seed=options.seed)]
    if options.mode != "train":
        return images, None
    targets = synthetic_targets(batch, *size, model.config.num_classes, seed=options.seed)
    return images, [{k: v.to(device) for k, v in t.items()} for t in targets]


def prepare(options: BenchOptions, device: torch.device) -> Prepared:
    """Build the model at its input size on ``device``, with inputs and the iteration to time."""
    model, name = build_model(options)
    if options.mode == "infer" and not options.exact:
        # What `fpn detect` runs: same results to rounding in fp32 (parity tests); weights cast once in bf16.
        model.optimize_for_inference(precision_dtype(options.precision))
    elif options.mode == "train" and not options.exact:
        model.use_channels_last()  # what `fpn train` runs (train.channels_last and train.winograd default to true)
        if device.type == "cpu":
            model.use_winograd()
    size = options.size or eval_size(model.config)
    fit_input(model, *size)
    model.to(device)
    batch = options.iteration_batch
    images, targets = make_inputs(options, model, size, batch, device)
    timer = StageTimer(model, device)
    step = make_step(model, options.mode, autocast_precision(options), images, targets, timer, seed=options.seed)
    return Prepared(model, name, device, size, batch, images, targets, timer, step)
