"""Keep freed memory in the process for reuse: fewer page faults on fresh feature maps (Linux, glibc).

PyTorch's CPU tensors come from ``malloc``. glibc serves a block above its mmap threshold with a fresh
``mmap`` and unmaps it on ``free``; the threshold starts at 128 kB and rises (up to 32 MB) to the size of the
largest mapped block freed so far, and free memory at the top of the heap beyond twice that is given back
("trimmed"). A training step allocates and frees maps of a few MB by the hundred in an order that keeps
growing and trimming the heap, so the kernel maps, faults in and zeroes the same pages again and again: a
tiny-fpn training step on the 2-core machine of benchmarks/ took ~17 000 minor page faults and ~45 ms of
system time.

:func:`keep_freed_memory` fixes the mmap threshold at its maximum (32 MB) and the trim threshold at 1 GiB:
blocks up to 32 MB come from the heap and freed ones stay mapped for the next map (a 1-2 page faults per
step afterwards). Larger blocks (r50-fpn's P2 at 800x1216 is 62 MB) are still mapped and unmapped as before.
The cost: the resident set stays near the peak it reached (the largest ever, not the current need).
Measured by ``benchmarks/allocator.py`` (fresh ``fpn bench`` processes with and without the setting,
alternated; results/allocator_2026-12-01.md), median of 4 paired ratios: tiny-fpn and small-fpn training
steps 1.24x and 1.23x faster (single pairs 0.94-1.59x: the machine's speed drifts more than that between
processes), r18-fpn training at 800x1216 1.02x (0.86-1.12x), r50-fpn fp32 inference 1.15x (1.08-1.25x); peak
memory of an iteration +2 to +4 % for the small presets, -1 % and -10 % for the other two.

The ``fpn`` command applies it at start (``FPN_KEEP_FREED_MEMORY=0`` in the environment turns it off);
library users call :func:`keep_freed_memory` themselves, early. It cannot be undone in a process: glibc has
no call that returns to the dynamic thresholds. Without glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

ENV_SWITCH = "FPN_KEEP_FREED_MEMORY"

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
_TRIM_THRESHOLD = 1 << 30

_state = {"kept": False}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on musl and other C libraries
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 32 MB and its trim threshold at 1 GiB (see the module docstring).

    Returns whether the setting is in force; False where glibc is missing or refuses it.
    """
    if _state["kept"]:
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    if not ok:
        logger.debug("mallopt refused the allocator setting")
    _state["kept"] = ok
    return ok


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in force in this process."""
    return _state["kept"]


def switched_off() -> bool:
    """Whether ``FPN_KEEP_FREED_MEMORY`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def apply_from_environment() -> bool:
    """:func:`keep_freed_memory` unless the environment switches it off (:func:`switched_off`)."""
    return False if switched_off() else keep_freed_memory()
