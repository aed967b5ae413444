"""The level contract: every feature map in the model is declared once, here, by name, stride and channels.

A backbone produces bottom-up levels ``c2..c5``; a pyramid design produces ``p2..p7`` (or a subset).
Anchor generators, RoI poolers and heads read the levels they are given instead of assuming them, and
:func:`check_levels` runs when a model is built so that a mismatch fails with a message naming it.

The name carries the level's index ``k``: level ``pk`` (or ``ck``) has stride ``2**k`` relative to the
input image. That is the paper's convention (P2 has stride 4, P5 stride 32).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fpn.errors import ModelBuildError

_NAME = re.compile(r"^([cp])([1-9])$")


@dataclass(frozen=True)
class Level:
    """One feature map: ``name`` such as ``"p3"``, its ``stride`` in input pixels, its ``channels``."""

    name: str
    stride: int
    channels: int

    def __post_init__(self) -> None:
        match = _NAME.match(self.name)
        if match is None:
            raise ModelBuildError(f"level name {self.name!r} is not of the form c2..c9 or p2..p9")
        if self.stride != 2 ** int(match.group(2)):
            raise ModelBuildError(f"level {self.name} must have stride {2 ** int(match.group(2))}, got {self.stride}")
        if self.channels <= 0:
            raise ModelBuildError(f"level {self.name} must have a positive channel count, got {self.channels}")

    @property
    def index(self) -> int:
        """The ``k`` of ``pk``: log2 of the stride."""
        return int(self.name[1:])

    @property
    def kind(self) -> str:
        """``"c"`` for a bottom-up (backbone) level, ``"p"`` for a pyramid level."""
        return self.name[0]


def level(name: str, channels: int) -> Level:
    """Build a :class:`Level` from its name, deriving the stride from the index (``p3`` -> 8)."""
    match = _NAME.match(name)
    if match is None:
        raise ModelBuildError(f"level name {name!r} is not of the form c2..c9 or p2..p9")
    return Level(name, 2 ** int(match.group(2)), channels)


def check_levels(levels: Sequence[Level], *, consumer: str, channels: int | None = None) -> None:
    """Check a chain of levels as a consumer (anchor generator, pooler, head) is about to read it.

    The names must be unique and of one kind, each stride must be twice the one before (fine to coarse), and, if
    ``channels`` is given, every level must carry that many channels (a shared head needs them equal).
    """
    if not levels:
        raise ModelBuildError(f"{consumer}: no levels given")
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names):
        raise ModelBuildError(f"{consumer}: duplicate levels in {names}")
    if len({lv.kind for lv in levels}) != 1:
        raise ModelBuildError(f"{consumer}: levels mix bottom-up and pyramid maps: {names}")
    for finer, coarser in itertools.pairwise(levels):
        if coarser.stride != 2 * finer.stride:
            raise ModelBuildError(
                f"{consumer}: each level must have twice the stride of the one before, but {coarser.name}"
                f" (stride {coarser.stride}) follows {finer.name} (stride {finer.stride})"
            )
    if channels is not None:
        wrong = [f"{lv.name} has {lv.channels}" for lv in levels if lv.channels != channels]
        if wrong:
            raise ModelBuildError(f"{consumer} expects {channels} channels on every level, but " + ", ".join(wrong))


def check_features(features: Mapping[str, torch.Tensor], levels: Iterable[Level], *, producer: str) -> None:
    """Check that computed feature maps match the levels their producer declared (names and channels)."""
    levels = list(levels)
    if list(features) != [lv.name for lv in levels]:
        raise ModelBuildError(f"{producer} declared levels {[lv.name for lv in levels]} but produced {list(features)}")
    for lv in levels:
        got = features[lv.name].shape[1]
        if got != lv.channels:
            raise ModelBuildError(f"{producer}: {lv.name} declared {lv.channels} channels, produced {got}")


def describe(levels: Iterable[Level]) -> str:
    """One line per level, e.g. ``p3  stride 8  256 ch``, for printing."""
    return "\n".join(f"{lv.name}  stride {lv.stride:>3}  {lv.channels:>4} ch" for lv in levels)
