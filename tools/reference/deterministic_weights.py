"""Deterministic, name-derived weights for parity tests against torchvision (torch is the only dependency).

``deterministic_state_dict(shapes)`` turns a mapping ``{key: shape}`` into a state dict whose every tensor depends
only on its key's name and shape: the generator for a key is seeded with ``zlib.crc32(key)``, so the same key gets
the same values whatever module, order or process asks for it.

This module is imported both by the golden generators (reference venv, with torchvision) and by the test suite
(without torchvision, via ``sys.path`` insertion of ``tools/reference``). To make the two bit-identical the values are
built from integers only: ``torch.randint`` on a CPU generator (a serial, exact kernel) feeds float64 arithmetic
that is cast to float32 at the end. ``torch.randn`` is avoided on purpose: its vectorised CPU path evaluates
transcendental functions whose last bit may depend on the CPU's instruction set.

Every random value is a centred uniform with the wanted standard deviation (bounded, so batch-norm scales and
variances stay positive). Roles, decided from the key's name and shape (first matching rule wins):

=================================================  ============================================================
key                                                 values
=================================================  ============================================================
``*num_batches_tracked`` (any integer buffer)       zeros (int64)
``*running_mean``                                   uniform, std 0.1
``*running_var``                                    uniform in [0.5, 1.5)
special ``*.weight`` keys (``SPECIAL_WEIGHT_STD``)  uniform, fixed std (detector output layers, see below)
``*.weight`` with >= 2 dims (conv / linear)         uniform, std ``WEIGHT_GAIN * sqrt(2 / fan_in)``, zero-sum
``*.weight`` with 1 dim (norm scale)                uniform around 1, std 0.1 (so in [0.83, 1.17])
``*.bias``                                          uniform, std 0.05
anything else                                       uniform, std 0.1
=================================================  ============================================================

``fan_in`` is ``prod(shape[1:])`` (input channels times kernel area, or in_features). "Zero-sum": the weights of
every output unit (``w[o]``) have their mean removed (exactly, in integers; skipped when ``fan_in == 1``), which
keeps the positive mean of ReLU outputs from turning into a position-independent offset that swamps every feature
map of a random network (the std shrinks by a negligible ``sqrt(1 - 1 / fan_in)``). With ``WEIGHT_GAIN = 0.75``
activations stay O(1) through resnet18..resnet101 with eval-mode batch norm. The special keys make the
detector's outputs useful: a peaky classifier (``cls_score``) gives Faster R-CNN a healthy number of detections
above its 0.05 score threshold, a strong objectness layer (``cls_logits``) spreads RPN scores, and small box
regression layers (``bbox_pred``) keep the predicted boxes near their anchors / proposals.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "SPECIAL_WEIGHT_STD",
    "WEIGHT_GAIN",
    "deterministic_state_dict",
    "deterministic_tensor",
    "state_dict_shapes",
]

WEIGHT_GAIN = 0.75
"""Multiplier on the Kaiming std ``sqrt(2 / fan_in)`` of conv / linear weights."""

SPECIAL_WEIGHT_STD: dict[str, float] = {
    "box_predictor.cls_score.weight": 0.2,
    "box_predictor.bbox_pred.weight": 0.02,
    "rpn.head.cls_logits.weight": 0.1,
    "rpn.head.bbox_pred.weight": 0.01,
}
"""Absolute weight std for keys ending with these suffixes (checked in this order)."""

_UNIFORM_BITS = 24


def _seed(key: str) -> int:
    """Generator seed of a key: CRC-32 of its UTF-8 name."""
    return zlib.crc32(key.encode("utf-8"))


def _centred_uniform(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Float64 values uniform on (-sqrt(3), sqrt(3)) -- mean 0, std 1 -- drawn exactly from the key's generator."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_seed(key))
    ints = torch.randint(0, 2**_UNIFORM_BITS, tuple(shape), generator=gen, dtype=torch.int64)
    unit = (ints.to(torch.float64) + 0.5) / float(2**_UNIFORM_BITS)  # exact, in (0, 1)
    return (unit * 2.0 - 1.0) * math.sqrt(3.0)


def _zero_sum_uniform(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Like ``_centred_uniform`` but every output unit's weights (dim 0) sum to zero, computed in exact integers.

    Removing the per-unit mean stops the positive mean of ReLU outputs from turning into a position-independent
    offset that would dominate every feature map of a randomly initialised network.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_seed(key))
    ints = torch.randint(0, 2**_UNIFORM_BITS, tuple(shape), generator=gen, dtype=torch.int64)
    flat = ints.reshape(shape[0], -1)
    fan_in = flat.shape[1]
    if fan_in == 1:
        return _centred_uniform(key, shape)
    centred = flat * fan_in - flat.sum(dim=1, keepdim=True)  # exact: |values| < 2**24 * fan_in
    scale = 2.0 * math.sqrt(3.0) / (fan_in * float(2**_UNIFORM_BITS))
    return (centred.to(torch.float64) * scale).reshape(tuple(shape))


def _unit_uniform(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Float64 values uniform on (0, 1) drawn exactly from the key's generator."""
    return _centred_uniform(key, shape) / (2.0 * math.sqrt(3.0)) + 0.5


def _weight_std(key: str, shape: Sequence[int]) -> float:
    """Std of a conv / linear weight: a special fixed value or Kaiming ``WEIGHT_GAIN * sqrt(2 / fan_in)``."""
    for suffix, std in SPECIAL_WEIGHT_STD.items():
        if key.endswith(suffix):
            return std
    fan_in = math.prod(shape[1:])
    return WEIGHT_GAIN * math.sqrt(2.0 / fan_in)


def deterministic_tensor(key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The deterministic value of one state-dict entry, chosen by the role its name and shape suggest.

    Args:
        key: full state-dict key, e.g. ``"backbone.body.layer1.0.conv1.weight"``.
        shape: tensor shape (``()`` for scalars).
        dtype: wanted dtype; integer dtypes (e.g. ``num_batches_tracked``) give zeros.

    Returns:
        A CPU tensor of ``shape`` and ``dtype``.
    """
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64 if dtype.is_floating_point else dtype)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if key.endswith("running_mean"):
        values = 0.1 * _centred_uniform(key, shape)
    elif key.endswith("running_var"):
        values = 0.5 + _unit_uniform(key, shape)
    elif key.endswith("weight") and len(shape) >= 2:
        values = _weight_std(key, shape) * _zero_sum_uniform(key, shape)
    elif key.endswith("weight"):
        values = 1.0 + 0.1 * _centred_uniform(key, shape)
    elif key.endswith("bias"):
        values = 0.05 * _centred_uniform(key, shape)
    else:
        values = 0.1 * _centred_uniform(key, shape)
    return values.to(dtype)


def deterministic_state_dict(
    shapes: Mapping[str, Sequence[int]],
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> dict[str, torch.Tensor]:
    """A state dict with a deterministic tensor for every key of ``shapes`` (same order).

    Args:
        shapes: ``{key: shape}``, e.g. ``state_dict_shapes(model)`` or ``dict(json.load(f)["resnet50"])`` for the
            ``[[key, shape], ...]`` lists in ``tests/golden/*_keys.json`` (shapes may be lists).
        dtypes: optional ``{key: dtype}``; keys not listed are float32, except ``*num_batches_tracked`` (int64).

    Returns:
        ``{key: tensor}`` ready for ``module.load_state_dict``.
    """
    dtypes = dtypes or {}
    return {key: deterministic_tensor(key, shape, dtypes.get(key, torch.float32)) for key, shape in shapes.items()}


def state_dict_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a module's state dict, in order (convenience for ``deterministic_state_dict``)."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}
