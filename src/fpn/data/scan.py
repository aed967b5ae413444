"""The up-front scan of a dataset's images: each decoded once, the unreadable ones left out with one warning.

A truncated PNG or an empty JPEG passes a check that the file exists and fails only when a DataLoader worker
decodes it, possibly hours into a run, as a traceback from another process. The readers therefore decode every
image when the dataset is built and leave out those that cannot be read, naming them in one warning (with
``strict``, the first one is a :class:`~fpn.errors.DataError` instead). Decoding a whole dataset is real work,
so it runs in a thread pool (Pillow releases the GIL while it decodes) and its outcome is cached per file,
keyed by path, size and modification time, in one small JSON file per dataset split under the cache folder:
the next run decodes only the files that changed. A cache that cannot be read or written is not an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpn.data.dataset import ImageRecord, size_mismatch
from fpn.data.images import open_image
from fpn.errors import DataError, FpnError
from fpn.io import atomic_write_text

logger = logging.getLogger("fpn.data")

#: Bump when what a cache entry means changes, so that older caches are ignored.
CACHE_VERSION = 1
#: How many unreadable files the warning names before it says "and N more".
NAMED = 3


def cache_dir() -> Path:
    """Where ``fpn`` keeps generated data: ``$FPN_CACHE`` if set, else ``~/.cache/fpn``."""
    configured = os.environ.get("FPN_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fpn"


@dataclass(frozen=True)
class ImageCheck:
    """What decoding one file found: the size it loads at, or the one-line reason it cannot be loaded.

    ``lasting`` is false for a file that could not even be opened (no permission): that changes without
    changing the file's size or modification time, so it is not cached.
    """

    height: int = 0
    width: int = 0
    error: str | None = None
    lasting: bool = True


# ------------------------------------------------------------------------------------------- decoding


def _cores() -> int:
    """The cores this process may use (fewer than the machine's under a CPU affinity mask or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode(path: Path) -> ImageCheck:
    """Decode ``path`` fully, as training will, and keep only its size or the reason it failed."""
    try:
        with open_image(path) as image:
            return ImageCheck(height=image.height, width=image.width)
    except DataError as error:
        return ImageCheck(error=str(error), lasting=os.access(path, os.R_OK))


def decode_all(paths: Sequence[Path]) -> list[ImageCheck]:
    """:func:`decode` every path, in a thread pool sized to the usable cores."""
    workers = min(len(paths), _cores())
    if workers <= 1:
        return [decode(path) for path in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fpn-scan") as pool:
        return list(pool.map(decode, paths))


# ---------------------------------------------------------------------------------------------- cache


def cache_file(key: str) -> Path:
    """The cache file of one dataset split, named by a digest of ``key`` (its annotation file, its folder)."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "image-checks" / f"{digest}.json"


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)``: what tells a file that changed since it was checked; ``None`` if it is gone."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _entry(stamp: tuple[int, int], check: ImageCheck) -> dict[str, Any]:
    return {"stamp": list(stamp), "height": check.height, "width": check.width, "error": check.error}


def _cached(entry: Any, stamp: tuple[int, int] | None) -> ImageCheck | None:
    """The check an entry records if it is well formed and its file has not changed since, else ``None``."""
    if stamp is None or not isinstance(entry, dict) or entry.get("stamp") != list(stamp):
        return None
    height, width, error = entry.get("height"), entry.get("width"), entry.get("error")
    if not (isinstance(height, int) and isinstance(width, int) and (error is None or isinstance(error, str))):
        return None
    return ImageCheck(height=height, width=width, error=error)


def read_cache(path: Path) -> dict[str, Any]:
    """The entries of a cache file by image path; empty if it is missing, unreadable or of another version."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def write_cache(path: Path, key: str, entries: Mapping[str, Any]) -> None:
    """Write the cache atomically; a read-only or full disk only costs the next run its decoding time."""
    text = json.dumps({"version": CACHE_VERSION, "source": key, "files": dict(entries)})
    try:
        atomic_write_text(text, path)
    except (OSError, FpnError) as error:  # the writer may report an OSError as its own one-line error
        logger.debug("%s: image check cache not written (%s)", path, error)


def check_images(paths: Iterable[Path], key: str, source: str) -> dict[Path, ImageCheck]:
    """The check of every file, decoding only those the cache of ``key`` has no current entry for."""
    paths = list(dict.fromkeys(paths))
    store = cache_file(key)
    cached = read_cache(store)
    stamps = {path: _stamp(path) for path in paths}
    found = {path: _cached(cached.get(str(path)), stamps[path]) for path in paths}
    checks = {path: check for path, check in found.items() if check is not None}
    stale = [path for path, check in found.items() if check is None]
    if stale:
        logger.info(
            "%s: decoding %d of %d images to check them (cached for the next run)", source, len(stale), len(paths)
        )
        checks.update(zip(stale, decode_all(stale), strict=True))
        # The stamp taken before decoding: a file that changes meanwhile is checked again next time.
        entries = {
            str(path): _entry(stamp, check)
            for path, check in checks.items()
            if (stamp := stamps[path]) is not None and check.lasting
        }
        write_cache(store, key, entries)
    return checks


# --------------------------------------------------------------------------------------------- report


def _reason(path: Path, message: str) -> str:
    """The message without the path it starts with, since the warning names the file itself."""
    return message.removeprefix(f"{path}: ")


def unreadable_message(source: str, problems: Sequence[tuple[str, Path, str]], total: int) -> str:
    """One line naming the first few unreadable files (``problems``: name, path, message) and the count."""
    named = "; ".join(f"{name}: {_reason(path, message)}" for name, path, message in problems[:NAMED])
    more = f"; and {len(problems) - NAMED} more" if len(problems) > NAMED else ""
    return f"{source}: {len(problems)} of {total} images unreadable, left out: {named}{more}"


def readable_records(
    records: Sequence[ImageRecord],
    source: str,
    key: str,
    *,
    strict: bool = False,
    unreadable: Sequence[tuple[str, Path, str]] = (),
) -> list[ImageRecord]:
    """The records whose image decodes; the others are left out with one warning, or with ``strict`` raise.

    ``unreadable`` lists files a reader already failed on (name, path, message), to be reported alike. An
    image that decodes at another size than its annotations give raises whatever ``strict`` says: that is an
    annotation error, and its boxes would be wrong. An empty result raises too: there is nothing to train on.
    """
    checks = check_images((record.path for record in records), key, source)
    problems = list(unreadable)
    kept = []
    for record in records:
        check = checks[record.path]
        if check.error is not None:
            problems.append((record.file_name, record.path, check.error))
            continue
        mismatch = size_mismatch(record, check.height, check.width, source)
        if mismatch is not None:
            raise mismatch
        kept.append(record)
    total = len(records) + len(unreadable)
    if problems and (strict or not kept):
        message = problems[0][2]
        raise DataError(f"{message} (referenced by {source}; {len(problems)} of {total} images unreadable)")
    if problems:
        logger.warning(unreadable_message(source, problems, total))
    return kept
