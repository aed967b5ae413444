"""The README's commands exist as written: every ``fpn ...`` line of its "Use it" block parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fpn.cli import build_parser

README = Path(__file__).parents[1] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"## Use it\s+```\n(.*?)```", text, re.S)
    assert block, "README has no 'Use it' command block"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith("fpn ")]


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    argv = [arg if arg != "..." else "model.pt" for arg in shlex.split(command)[1:]]
    args = build_parser().parse_args(argv)  # an unknown flag or a bad value exits with status 2
    assert callable(args.run)
