"""Moved to :mod:`fpn.bench` (issue 18): FLOPs to :mod:`fpn.bench.flops`, sizes to :mod:`fpn.bench.inputs`,
memory to :mod:`fpn.bench.memory`, the machine to :mod:`fpn.bench.machine`.

Kept only because ``fpn.cli.models`` still imports ``eval_size`` and ``forward_gflops`` from here; delete this
module once it imports them from :mod:`fpn.bench`.
"""

from __future__ import annotations

from fpn.bench.flops import forward_gflops
from fpn.bench.inputs import eval_size

__all__ = ["eval_size", "forward_gflops"]
