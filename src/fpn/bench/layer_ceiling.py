"""The layer ceiling: how fast one iteration could run if nothing but its dense layers cost time.

``fpn bench`` sets a model's GFLOP/s against the machine's peak, the best rate of a large GEMM or a wide 3x3
convolution. A model whose layers are narrow (tiny-fpn: 16-64 channels) cannot reach that rate even with
zero overhead, because its convolutions themselves run below the peak. :func:`layer_ceiling` separates the
two: it records every dense operation of one iteration (convolutions, fused convolutions, matrix products,
their backward passes in training: every op that ``torch.utils.flop_counter`` counts FLOPs for) with its
arguments' shapes, strides and dtypes, then runs each distinct call alone on fresh random tensors of the same
layout and times it. Summed over the iteration's calls that gives:

* ``seconds``: the iteration's time if everything but these layers were free (RoIAlign, NMS, GroupNorm,
  element-wise work, allocation and Python glue cost nothing);
* ``share_of_iteration``: ``seconds`` over the measured iteration, the part the layers take;
* ``gflops_per_s``, ``fraction_of_peak``: the layers' own rate (FLOPs that ran) over the peak;
* ``ceiling_fraction_of_peak``: the model's nominal GFLOPs (Winograd counted as direct convolutions, as in
  ``fraction_of_peak``) over ``seconds`` over the peak, i.e. the highest ``fraction_of_peak`` this model can
  show at this size on this machine with these kernels; above 1 only through Winograd. It equals
  ``fraction_of_peak / share_of_iteration``; ``paired_ceiling_fraction_of_peak`` is the same with the paired
  fraction (the iteration's rate over the peak timed next to it), the one to read where the machine drifts;
* ``slowest``: the calls that take the most time in total, with their shapes and rates.

A call replayed alone runs on inputs of the same size and layout but not where the iteration left them (in
cache or not), so the sum estimates the layers' time inside the iteration rather than measuring it. Only the layouts are
kept while recording (one call's tensors exist at a time while timing); tensors in non-strided layouts
(oneDNN's packed weights) are reused as they are.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# Private torch APIs, used here and nowhere else in fpn. Recording every dense call with its arguments needs a
# dispatch mode: it sees the aten calls below autograd, the backward's convolutions included, which no public
# hook does (FlopCounterMode is built on one too); pytree walks the nested arguments as the dispatcher does. If a
# torch release renames or changes them, this import or record_layers fails: only `fpn bench --layers` and
# tests/bench/test_layer_ceiling.py break, because nothing imports this module but run_bench when asked for
# layers (fpn.bench's __init__ does not).
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode, flop_registry

REPEATS = 3  # timed runs of each distinct call (the median counts), after one warm-up
SLOWEST = 8  # how many of the most expensive calls the record lists


@dataclass
class LayerCall:
    """One distinct dense call: the op, its arguments (tensors as :class:`TensorSpec`), how often it was made."""

    op: Any
    args: Any
    kwargs: Any
    signature: str
    count: int = 1
    seconds: float = 0.0  # one call, alone
    flops: float = 0.0  # one call


@dataclass(frozen=True)
class TensorSpec:
    """A strided tensor's layout, kept instead of the tensor (an iteration's maps would fill the memory)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def materialize(self) -> torch.Tensor:
        """A random tensor of this layout."""
        # The storage the strides reach, filled first: expanded (stride-0) views cannot be written through.
        extent = 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride)) if all(self.shape) else 0
        storage = torch.empty(extent, dtype=self.dtype, device=self.device)
        storage.normal_() if storage.is_floating_point() else storage.zero_()
        return storage.as_strided(self.shape, self.stride)


def _spec(value: Any) -> Any:
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        return value  # packed weights (and non-tensors) are replayed as they are
    return TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype, value.device)


def _signature_key(func: Any, args: Any, kwargs: Any) -> tuple[tuple, Any]:
    """The arguments as specs, and a hashable key of the op and those specs: calls alike in every layout share it.

    Lists and keyword dicts are flattened (never keyed by ``repr``: a tensor's would print its values); packed
    weights stay themselves (hashed by identity), other values are keyed by ``repr``.
    """
    specs = tree_map(_spec, (args, kwargs))
    leaves, structure = tree_flatten(specs)
    key = tuple(leaf if isinstance(leaf, TensorSpec | torch.Tensor) else repr(leaf) for leaf in leaves)
    return (str(func), str(structure), key), specs


def _materialize(value: Any) -> Any:
    return value.materialize() if isinstance(value, TensorSpec) else value


def _shapes(args: tuple) -> str:
    shapes = [list(a.shape) for a in args if isinstance(a, torch.Tensor | TensorSpec)]
    return " ".join(str(s).replace(" ", "") for s in shapes)


class _Recorder(TorchDispatchMode):
    """Records the dense calls (ops with a FLOP formula) that one iteration makes, grouped by signature."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple, LayerCall] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket not in flop_registry:
            # Under inference_mode composite ops (aten.conv2d, aten.linear) arrive whole: record what they run,
            # as FlopCounterMode counts them.
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        else:
            key, (specs, kwarg_specs) = _signature_key(func, args, kwargs)
            call = self.calls.get(key)
            if call is None:
                self.calls[key] = LayerCall(func, specs, kwarg_specs, f"{func} {_shapes(args)}")
            else:
                call.count += 1
        return func(*args, **kwargs)


def record_layers(step: Callable[[], None]) -> list[LayerCall]:
    """The distinct dense calls of one ``step``, each with its count."""
    recorder = _Recorder()
    with recorder:
        step()
    return list(recorder.calls.values())


@dataclass
class LayerCeiling:
    calls: list[LayerCall] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(c.seconds * c.count for c in self.calls)

    @property
    def gflops(self) -> float:
        return sum(c.flops * c.count for c in self.calls) / 1e9


def time_layers(calls: list[LayerCall], synchronize: Callable[[], None], repeats: int = REPEATS) -> LayerCeiling:
    """Run each call alone: its FLOPs once under the FLOP counter, then ``repeats`` timed runs (median)."""
    with torch.no_grad():
        for call in calls:
            args, kwargs = tree_map(_materialize, call.args), tree_map(_materialize, call.kwargs)
            counter = FlopCounterMode(display=False)
            with counter:
                call.op(*args, **kwargs)  # also the warm-up
            call.flops = float(counter.get_total_flops())
            times = []
            for _ in range(repeats):
                synchronize()
                start = time.perf_counter()
                call.op(*args, **kwargs)
                synchronize()
                times.append(time.perf_counter() - start)
            call.seconds = statistics.median(times)
            del args, kwargs  # one call's tensors at a time
    return LayerCeiling(calls)


def layer_ceiling(
    step: Callable[[], None],
    *,
    iteration_s: float,
    nominal_gflops: float,
    peak_gflops_per_s: float,
    paired_fraction_of_peak: float | None = None,
    synchronize: Callable[[], None] = lambda: None,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """Record one ``step``'s dense calls, time each alone, and return the ``layers`` record (module docstring)."""
    ceiling = time_layers(record_layers(step), synchronize, repeats)
    seconds = ceiling.seconds
    share = seconds / iteration_s
    slowest = sorted(ceiling.calls, key=lambda c: -c.seconds * c.count)[:SLOWEST]
    return {
        "calls": sum(c.count for c in ceiling.calls),
        "distinct_calls": len(ceiling.calls),
        "seconds": seconds,
        "share_of_iteration": share,
        "executed_gflops": ceiling.gflops,
        "gflops_per_s": ceiling.gflops / seconds if seconds > 0 else None,
        "fraction_of_peak": ceiling.gflops / seconds / peak_gflops_per_s if seconds > 0 else None,
        "ceiling_fraction_of_peak": nominal_gflops / seconds / peak_gflops_per_s if seconds > 0 else None,
        "paired_ceiling_fraction_of_peak": paired_fraction_of_peak / share
        if paired_fraction_of_peak and share
        else None,
        "slowest": [
            {
                "call": c.signature,
                "count": c.count,
                "ms_each": 1e3 * c.seconds,
                "ms_total": 1e3 * c.seconds * c.count,
                "gflops_per_s": c.flops / c.seconds / 1e9 if c.seconds > 0 else None,
            }
            for c in slowest
        ],
    }
