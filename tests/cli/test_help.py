"""``fpn --version`` and every ``--help``: each option with a default says what it is, and every page renders."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest

import fpn.version as version_module
from fpn.cli import COMMANDS, build_parser, main


def parsers() -> dict[str, argparse.ArgumentParser]:
    """``fpn``'s own parser and each subcommand's, by name."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"fpn": parser, **commands.choices}


def has_default(action: argparse.Action) -> bool:
    """An option whose absence means something worth saying (flags default to False; None means "not set")."""
    return bool(action.option_strings) and not (
        action.default is None or action.default is False or action.default == argparse.SUPPRESS
    )


def unstated_defaults(parser: argparse.ArgumentParser) -> list[str]:
    """The options with a default whose help does not say "default" in words: a bare ``(%(default)s)``
    shows a value, not that it is the one used when the option is left out."""
    return [
        action.option_strings[-1]
        for action in parser._actions
        if has_default(action) and "default" not in (action.help or "").replace("%(default)s", "").lower()
    ]


@pytest.mark.parametrize("command", ["fpn", *COMMANDS])
def test_every_option_with_a_default_states_it(command):
    assert unstated_defaults(parsers()[command]) == []


@pytest.mark.parametrize("command", ["fpn", *COMMANDS])
def test_every_help_page_renders(command):
    text = parsers()[command].format_help()  # a stray % in a help string fails here, not in a user's terminal
    assert "%(" not in text and "usage:" in text


def test_the_checker_sees_a_missing_default():
    parser = argparse.ArgumentParser()
    parser.add_argument("--said", default=3, help="runs (default: %(default)s)")
    parser.add_argument("--shown", default=3, help="runs (%(default)s)")
    parser.add_argument("--zero", default=0, help="warm-up runs")
    parser.add_argument("--unset", help="a file")
    parser.add_argument("--flag", action="store_true", help="on or off")
    assert unstated_defaults(parser) == ["--shown", "--zero"]


def test_detect_help_states_the_computed_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["detect", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        "every class of the model",
        "the checkpoint's roi_heads.nms_thresh",
        "the checkpoint's roi_heads.detections_per_image",
        "the checkpoint's transform.min_size",
        "the checkpoint's transform.max_size",
        "--set KEY=VALUE",
    ):
        assert words in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"fpn {importlib.metadata.version('fpn')}\n"


def test_version_of_a_source_tree_without_metadata(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version_module, "version", not_installed)
    assert version_module.installed_version() == version_module.source_version() != version_module.UNKNOWN
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.other]\nversion = "9"\n\n[project]\nname = "fpn"\nversion = "1.2.3"\n')
    assert version_module.source_version(pyproject) == "1.2.3"
    pyproject.write_text('[project]\nname = "fpn"\n[tool.other]\nversion = "9"\n')
    assert version_module.source_version(pyproject) == version_module.UNKNOWN
    assert version_module.source_version(tmp_path / "missing.toml") == version_module.UNKNOWN
