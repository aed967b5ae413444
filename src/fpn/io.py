"""Reading weights safely and writing every output atomically.

Files are read with ``torch.load(..., weights_only=True)`` (or safetensors), never as arbitrary pickles.
Files are written atomically (temporary file in the same folder, then rename), so an interrupted write
never leaves a half-written checkpoint where a good one was. The same writes serve every output of the
commands (JSON, YAML, pictures): :func:`check_writable` tests an output path before a command's work, and
a write that fails anyway raises a one-line :class:`~fpn.errors.OutputError` naming the file.

This module knows nothing of detectors and imports nothing of ``fpn`` but :mod:`fpn.errors`: loading and
saving a detector (the project's layout, torchvision's) is :mod:`fpn.detection.checkpoint`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpn.errors import CheckpointError, OutputError


def read_state_dict(source: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file (``.pt``/``.pth``/``.safetensors``) or URL without unpickling code."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        try:
            return torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # network errors come in many types; the message is what matters
            raise CheckpointError(f"{source}: cannot download ({exc})") from None
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from None
        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({first[:200]})") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return dict(data)


def load_matching(module: nn.Module, state: Mapping[str, Any], *, source: str, what: str) -> None:
    """Load ``state`` into ``module`` requiring the same keys and shapes, or say precisely what differs."""
    own = module.state_dict()
    # FrozenBatchNorm accepts and ignores BatchNorm's counter, so a BN checkpoint fits a frozen-BN model.
    state = {k: v for k, v in state.items() if not (k.endswith("num_batches_tracked") and k not in own)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: does not fit {what}: " + "; ".join(parts))
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key} is not a tensor")
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{source}: does not fit {what}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the permissions a plain ``open`` would have, then rename it over ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (the folder a write would start creating from)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_write(path: Path, error: OSError) -> OutputError:
    """A one-line error for an output that cannot be written, naming the file in the way if there is one."""
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        return OutputError(f"{path}: cannot write there: {base} is a file, not a folder")
    reason = error.strerror or str(error) or type(error).__name__
    return OutputError(f"{path}: cannot write ({reason})")


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Fail now, with a one-line :class:`~fpn.errors.OutputError`, if ``path`` could not be written later.

    Commands call this before their work, so that a typo or a read-only disk costs nothing but the message.
    ``path`` is a file to write, or with ``folder=True`` a folder to write files into; it need not exist
    yet. Nothing is created: the check makes and removes a temporary file in the nearest existing folder
    (the writes create the missing ones below it).
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise OutputError(f"{path}: is a folder; expected a file name")
    base = _existing_ancestor(path if folder else path.parent)
    if not base.is_dir():
        raise OutputError(f"{path}: cannot write there: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fpn-write-check.", dir=base)
    except OSError as error:
        raise _cannot_write(path, error) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[Any], None]) -> Path:
    """Write through ``write(handle)`` to a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX: readers see the old file or the new one, never half of one, and an
    interrupted write leaves the old file as it was. An OS error (no permission, disk full, a file where a
    folder should be) becomes a one-line :class:`~fpn.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _cannot_write(path, error) from None
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _cannot_write(path, error) from None
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (see :func:`_atomic_write`)."""
    return _atomic_write(path, "wb", lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (JSON results, YAML configs)."""
    return _atomic_write(path, "w", lambda handle: handle.write(text))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write a binary file atomically (pictures encoded in memory first)."""
    return _atomic_write(path, "wb", lambda handle: handle.write(data))
