"""Errors a user can act on.

Every problem caused by the user's input (a file, a config key, a checkpoint) raises a subclass of
:class:`FpnError` whose message is one line naming the file or key and the problem. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class FpnError(Exception):
    """Base class for errors caused by user input; the message is shown as is."""


class ConfigError(FpnError):
    """An unknown config key, a value of the wrong type, an impossible combination."""


class DataError(FpnError):
    """A missing or corrupt image, a malformed annotation file, an impossible box."""


class CheckpointError(FpnError):
    """A missing, unreadable or incompatible checkpoint file."""


class ModelBuildError(FpnError):
    """Parts of a model that do not fit together (strides, channels, anchors per level)."""


class ImageError(DataError, ValueError):
    """An image a detector cannot take: wrong type, shape, dtype or value range, or too thin to resize.

    Also a ValueError, which is what a Python caller passing a wrong argument expects to catch.
    """


class OutputError(FpnError, OSError):
    """An output file or folder that cannot be written (missing permission, read-only disk, a file in the way).

    Also an OSError, which is what a Python caller whose write failed expects to catch.
    """
