"""The ``fpn`` command: a thin layer over the library.

Each subcommand is a module of this package with ``add_parser(subparsers)`` and ``run(args) -> int``;
everything it does is one import away for a Python user. Errors caused by the user's input
(:class:`~fpn.errors.FpnError`) are printed as one line, ``fpn: error: <file>: <problem>``, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fpn.engine.stop import exit_status
from fpn.errors import FpnError
from fpn.version import __version__

# Subcommands in the order `fpn --help` lists them; each name is a module fpn.cli.<name>.
COMMANDS = ("detect", "train", "eval", "export", "demo", "models", "compare", "show", "anchors", "convert", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpn", description="Feature Pyramid Network object detection: train, evaluate, run and inspect."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"fpn {__version__}", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"fpn.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except FpnError as exc:
        print(f"fpn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stopped:
        print("fpn: interrupted", file=sys.stderr)
        return exit_status(stopped)  # 143 for a second SIGTERM, else 130


if __name__ == "__main__":
    sys.exit(main())
