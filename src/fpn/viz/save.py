"""Pictures written as every other output is: atomically, and with a one-line error if they cannot be.

A picture is encoded in memory first, then written through :func:`fpn.io.atomic_write_bytes`:
an interrupted run never leaves half a PNG, and a full disk or a read-only folder is an
:class:`~fpn.errors.OutputError` naming the file, not a traceback from inside Pillow or matplotlib.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from fpn.errors import OutputError
from fpn.io import atomic_write_bytes


def save_picture(picture: Any, path: str | os.PathLike, **options: Any) -> Path:
    """Write a Pillow image or a matplotlib figure to ``path``, in the format its extension names.

    ``options`` go to ``Image.save`` (e.g. ``quality``) or ``Figure.savefig`` (e.g. ``dpi``).
    """
    path = Path(path)
    buffer = io.BytesIO()
    try:
        if isinstance(picture, Image.Image):
            picture.save(buffer, format=_pillow_format(path), **options)
        else:
            picture.savefig(buffer, format=path.suffix.lstrip(".").lower() or None, **options)
    except (KeyError, ValueError) as error:
        raise OutputError(f"{path}: cannot write a picture in this format ({error})") from None
    return atomic_write_bytes(buffer.getvalue(), path)


def _pillow_format(path: Path) -> str:
    """Pillow's format name for the file's extension (``.jpg`` -> ``JPEG``)."""
    extensions = Image.registered_extensions()
    suffix = path.suffix.lower()
    if suffix not in extensions:
        raise ValueError(f"unknown picture extension {path.suffix!r}")
    return extensions[suffix]
