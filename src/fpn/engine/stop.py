"""Stopping a run on Ctrl-C or SIGTERM without losing its iterations.

The first SIGINT or SIGTERM only raises a flag: the loop finishes the iteration under way, writes
``last.pt`` and raises :class:`TrainingInterrupted`, so nothing since the previous checkpoint is lost and
``--resume`` continues exactly. A second signal stops at once (:class:`StoppedAtOnce`, a ``KeyboardInterrupt``);
checkpoints are written atomically, so even then the last one is intact.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT / SIGTERM arrived before the first one's checkpoint: the run stops where it is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal after checkpointing iteration ``iteration`` into ``run_dir/last.pt``.

    A ``KeyboardInterrupt``, so that code which stops on Ctrl-C keeps doing so.
    """

    def __init__(self, run_dir: Path, iteration: int, world_size: int = 1, signum: int | None = None) -> None:
        super().__init__(f"interrupted at iteration {iteration}; {run_dir / 'last.pt'} holds it")
        self.run_dir = run_dir
        self.iteration = iteration
        self.world_size = world_size
        self.signum = signum  # None on a process that stopped because another one was signalled

    def resume_command(self) -> str:
        return resume_command(self.run_dir, self.world_size)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM).

    A plain ``KeyboardInterrupt`` (no handler of ours saw the signal), or a process stopped because another one
    was signalled, counts as Ctrl-C.
    """
    return 128 + (getattr(interrupt, "signum", None) or signal.SIGINT)


def resume_command(run_dir: Path, world_size: int = 1) -> str:
    """The command line that continues the run in ``run_dir`` (with torchrun for several processes)."""
    launcher = f"torchrun --nproc_per_node {world_size} -m fpn" if world_size > 1 else "fpn"
    return f"{launcher} train --out {shlex.quote(str(run_dir))} --resume"


class StopRequest:
    """Set by the first SIGINT / SIGTERM while :meth:`handling` is active; the loop polls it."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise StoppedAtOnce(signum)
        self.signal = signum
        logger.warning(
            "%s: stopping after this iteration's checkpoint (again to stop at once)", signal.Signals(signum).name
        )

    @contextlib.contextmanager
    def handling(self) -> Iterator[StopRequest]:
        """Catch the signals for the duration (only the main thread can; elsewhere they keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
