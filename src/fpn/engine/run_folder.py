"""The run folder as one run's own: a lock for the run's lifetime, and writes that fail with one line.

Two ``fpn train`` into the same folder would truncate each other's ``log.jsonl`` and overwrite each other's
``last.pt``. :class:`RunLock` holds an exclusive ``flock`` on ``RUN/.lock`` while a run lives. The kernel
drops the lock when the process dies, however it dies, so a killed run leaves no stale lock behind; the
file's content (the holder's pid) is only there for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from fpn.errors import OutputError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
#: The files a run writes atomically; a killed write leaves ``.NAME.*.tmp`` beside them.
RUN_FILES = ("last.pt", "model.pt", "config.yaml", "log.jsonl", "metrics.json", "curves.json", "curves.png")


def _reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__


@contextlib.contextmanager
def writing(path: Path, what: str, *, kept: str = "") -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (read-only folder, full disk) into one line naming it.

    ``kept`` says what survived (an atomic write leaves the previous file as it was).
    """
    suffix = f"; {kept}" if kept else ""
    try:
        yield
    except OutputError as exc:  # the atomic writes name the file themselves
        if not kept:
            raise
        raise OutputError(f"{exc}{suffix}") from None
    except OSError as exc:
        raise OutputError(f"{path}: cannot write {what} ({_reason(exc)}){suffix}") from None


class RunLock:
    """An exclusive lock on ``run_dir`` held from :meth:`acquire` to :meth:`release`.

    A folder this lock created is removed again on release if the run left nothing in it (it failed before
    writing anything), so a mistyped data path does not leave empty run folders behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> RunLock:
        self.created = not self.run_dir.exists()
        with writing(self.run_dir, "the run folder"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while self.fd is None:
                self.fd = self._lock_once()
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.getpid()}\n".encode())
        self._remove_stale_temporaries()
        return self

    def _lock_once(self) -> int | None:
        """The locked descriptor of the lock file, or None if its holder removed it meanwhile (try again)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"{self.run_dir} is in use by another fpn train (pid {holder})") from None
        # A releasing holder unlinks the file before unlocking it: the file locked must be the one named.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return fd
        os.close(fd)
        return None

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of atomic writes a killed run left; nobody else writes here while we hold the lock."""
        for name in RUN_FILES:
            for stale in self.run_dir.glob(f".{name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
                    logger.debug("removed %s, left by a killed run", stale)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: see _lock_once
        os.close(self.fd)
        self.fd = None
        if self.created:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only if empty

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def worker_init(self) -> tuple[int, int, int] | None:
        """What :func:`init_worker` needs to drop the lock's descriptor in a data-loading process."""
        if self.fd is None:
            return None
        stat = os.fstat(self.fd)
        return self.fd, stat.st_dev, stat.st_ino


def init_worker(lock: tuple[int, int, int] | None, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave Ctrl-C to the training process, and let go of the run's lock.

    A forked worker shares the lock's open file, so without this it would keep the lock alive for the
    seconds it takes to notice that a killed training process is gone. On a terminal, Ctrl-C reaches the
    workers too; the training process stops them itself after its last checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if lock is None:
        return
    fd, dev, ino = lock
    with contextlib.suppress(OSError):
        stat = os.fstat(fd)
        if (stat.st_dev, stat.st_ino) == (dev, ino):  # inherited (fork), not another file under that number
            os.close(fd)
