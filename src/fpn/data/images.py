"""Reading images from disk into the tensors the models consume.

Every image goes through :func:`open_image`, so that all readers agree on two things that silently corrupt
training when they disagree: EXIF orientation is applied (a phone photo is loaded the way it is displayed,
which is the way it was annotated) and every mode (grayscale, RGBA, palette, CMYK, 16-bit) becomes 8-bit RGB.
A missing, unreadable or corrupt file raises :class:`~fpn.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fpn.errors import DataError

#: Extensions (lower case) that :func:`list_images` picks up from folders and globs.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Pillow refuses to open images above 2x ``Image.MAX_IMAGE_PIXELS`` (89.5 million pixels by default, ~13k x 13k)
#: as possible decompression bombs: a guard for servers decoding strangers' uploads. The aerial, satellite and
#: microscopy images that tiled detection is for run to 20,000 px a side (400 million pixels, 1.2 GB as RGB),
#: so fpn raises the limit to 2x this, 1,073 million pixels (32,768 px a side); larger still is refused with
#: a one-line error. A limit the user has set (anything but Pillow's default) is left as it is.
MAX_IMAGE_PIXELS = 2**29
_PILLOW_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
if Image.MAX_IMAGE_PIXELS == _PILLOW_DEFAULT_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# EXIF orientations 5..8 rotate by 90 or 270 degrees, which swaps width and height.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def _problem(path: Path, error: BaseException) -> DataError:
    """Turn whatever Pillow or the OS raised into a one-line DataError naming the file."""
    if isinstance(error, FileNotFoundError):
        return DataError(f"{path}: no such image file")
    if isinstance(error, IsADirectoryError):
        return DataError(f"{path}: is a folder, not an image file")
    if isinstance(error, PermissionError):
        return DataError(f"{path}: permission denied")
    if isinstance(error, UnidentifiedImageError):
        return DataError(f"{path}: not an image, or a format Pillow cannot read")
    if isinstance(error, Image.DecompressionBombError):
        return DataError(f"{path}: image is too large to decode safely ({error})")
    detail = " ".join(str(error).split()) or type(error).__name__
    return DataError(f"{path}: corrupt or truncated image ({detail})")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Plain ``convert("RGB")`` clips 16-bit and float images to white, so those are rescaled first. Alpha is
    dropped (not composited), which is what the common detection toolkits do, so models trained here see the
    same pixels as elsewhere.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        else:
            peak = float(values.max()) if values.size else 0.0
            scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
        gray = np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        # Pillow warns about palette transparency unless the image goes through RGBA first.
        image = image.convert("RGBA")
    return image.convert("RGB")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open, fully decode, orient (EXIF) and convert an image to an RGB Pillow image."""
    path = Path(path)
    try:
        with Image.open(path) as raw:
            raw.load()  # decode now, so a truncated file fails here and not somewhere inside a DataLoader
            oriented = ImageOps.exif_transpose(raw)
            return _to_rgb(oriented)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # SyntaxError and ValueError are what some Pillow plugins raise for malformed headers.
        raise _problem(path, error) from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as a float32 tensor ``[3, H, W]`` with values in 0..1."""
    array = np.asarray(_to_rgb(image), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0).contiguous()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """The inverse of :func:`pil_to_tensor`: a ``[3, H, W]`` tensor in 0..1 as an RGB Pillow image."""
    array = (image.detach().cpu().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Load an image file as an RGB float tensor ``[3, H, W]`` in 0..1 (EXIF orientation applied).

    Raises :class:`~fpn.errors.DataError` naming the file if it is missing, unreadable or corrupt.
    """
    return pil_to_tensor(open_image(path))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The ``(height, width)`` an image will have once loaded, read from its header without decoding it.

    EXIF orientation is taken into account, so this agrees with :func:`load_image`.
    """
    path = Path(path)
    try:
        with Image.open(path) as raw:
            width, height = raw.size
            orientation = raw.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _problem(path, error) from None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return height, width


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted list of image paths without duplicates.

    - a file is taken as is, whatever its extension (the user named it; :func:`load_image` will complain if
      it is not an image);
    - a folder contributes the image files directly inside it (not its subfolders);
    - anything else is a glob pattern (``**`` recurses) and contributes the image files it matches.

    A source that yields no image raises :class:`~fpn.errors.DataError` naming it.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: set[Path] = set()
    for source in sources:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = [p for p in path.iterdir() if p.is_file() and is_image_file(p)]
            if not matches:
                raise DataError(f"{text}: folder contains no image files ({', '.join(IMAGE_EXTENSIONS)})")
        elif glob.has_magic(text):
            matches = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
            matches = [p for p in matches if p.is_file() and is_image_file(p)]
            if not matches:
                raise DataError(f"{text}: pattern matches no image files")
        else:
            raise DataError(f"{text}: no such file or folder")
        found.update(matches)
    return sorted(found, key=lambda p: str(p))
