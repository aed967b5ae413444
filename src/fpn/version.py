"""The package's version: the installed distribution's, or the source tree's when run uninstalled.

The installed metadata is the truth a user's bug report needs (``fpn --version``); a source tree put on
``sys.path`` without ``pip install -e .`` has none, so its ``pyproject.toml`` says instead.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

UNKNOWN = "0+unknown"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # src/fpn/version.py -> the tree's root


def source_version(pyproject: Path = PYPROJECT) -> str:
    """``version = "..."`` of ``[project]`` in a source tree's ``pyproject.toml`` (read as text: Python 3.10 has
    no ``tomllib``); :data:`UNKNOWN` when there is no such file or line."""
    try:
        text = pyproject.read_text()
    except OSError:
        return UNKNOWN
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    found = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.MULTILINE) if project else None
    return found.group(1) if found else UNKNOWN


def installed_version() -> str:
    """The installed distribution's version, else the source tree's."""
    try:
        return version("fpn")
    except PackageNotFoundError:  # a source tree on sys.path without `pip install -e .`
        return source_version()


__version__ = installed_version()
