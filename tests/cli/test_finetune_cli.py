"""``fpn train --weights W``: a fine-tuned run, its resume (which never reads W again) and its one-line refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from class_sets import ab_and_bc

from fpn.cli import main
from fpn.config import to_dict
from fpn.engine import RunConfig
from fpn.io import read_state_dict
from fpn.presets import preset

FAST = ["workers=0", "train.batch_size=1", "lr=1e-2", "warmup_iters=1"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ab_and_bc(tmp_path_factory.mktemp("finetune-cli"))


@pytest.fixture(scope="module")
def trained_ab(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ab") / "run"
    assert (
        main(["train", "--data", str(sets["ab"]), "--model", "micro-fpn", "--out", str(run), "--iters", "1", *FAST])
        == 0
    )
    return run / "model.pt"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fpn: error: "), err
    return err


def test_a_finetuned_run_resumes_from_last_pt_never_from_its_weights(
    sets: dict[str, Path], trained_ab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    weights, run = tmp_path / "ab.pt", tmp_path / "run"
    weights.write_bytes(trained_ab.read_bytes())
    argv = ["train", "--data", str(sets["bc"]), "--weights", str(weights), "--out", str(run), *FAST]
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--iters", "1"]) == 0
    assert any(r.getMessage().startswith(f"--weights {weights}: loaded ") for r in caplog.records)
    config = RunConfig.load(run / "config.yaml")
    assert config.train.weights == str(weights) and config.model.class_names == ["b", "c"]
    assert to_dict(config.model.backbone) == {**to_dict(preset("micro-fpn").backbone), "weights": None}

    weights.write_bytes(b"gone")  # a resume must not read it again
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["train", "--resume", "--out", str(run), "--iters", "2"]) == 0
    assert read_state_dict(run / "last.pt")["iteration"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("--weights") for m in messages)
    assert any(
        m.startswith(f"resuming {run} at iteration 1") and f"fine-tuned from --weights {weights}" in m for m in messages
    )

    assert main(["train", "--resume", "--out", str(run), "--iters", "3", "--weights", str(trained_ab)]) == 2
    err = one_error_line(capsys)
    assert f"the run started from --weights {weights}" in err and str(trained_ab) in err


def test_weights_that_contradict_the_flags_or_do_not_fit_exit_2_naming_the_file(
    sets: dict[str, Path], trained_ab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--data", str(sets["bc"]), "--out", str(tmp_path / "run"), "--iters", "1", *FAST]
    capsys.readouterr()
    assert main([*base, "--weights", str(trained_ab), "--model", "tiny-fpn"]) == 2
    err = one_error_line(capsys)
    assert str(trained_ab) in err and "--model" in err
    assert main([*base, "--weights", str(trained_ab), "--design", "hierarchy"]) == 2
    err = one_error_line(capsys)
    assert str(trained_ab) in err and "'fpn'" in err

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00 not a checkpoint")
    assert main([*base, "--weights", str(corrupt)]) == 2
    assert str(corrupt) in one_error_line(capsys)

    checkpoint = read_state_dict(trained_ab)
    checkpoint["model"] = {f"other.{k}": v for k, v in checkpoint["model"].items()}
    unfitting = tmp_path / "unfitting.pt"
    torch.save(checkpoint, unfitting)
    assert main([*base, "--weights", str(unfitting)]) == 2
    err = one_error_line(capsys)
    assert f"{unfitting}: no tensor fits" in err
    assert not (tmp_path / "run" / "last.pt").exists()
