"""``fpn train --weights W``: a fine-tuned run, its resume (which never reads W again) and its one-line refusals."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
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


def test_two_processes_fine_tune_as_one(sets: dict[str, Path], trained_ab: Path, tmp_path: Path) -> None:
    """Every rank loads the same file into the same seeded model: torchrun's weights are one process's."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    argv = ["train", "--data", str(sets["bc"]), "--weights", str(trained_ab), "--iters", "2", "--device", "cpu"]
    argv += [*FAST, "train.micro_batch=1"]
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fpn"]
    done = subprocess.run(
        [*command, *argv, "--out", str(ddp_run)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(line.startswith(f"--weights {trained_ab}: loaded") for line in done.stderr.splitlines()) == 1

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv[argv.index("train.batch_size=1")] = "train.batch_size=2"  # one process, the same global batch
        assert main([*argv, "--out", str(single_run)]) == 0
    finally:
        torch.set_num_threads(threads)
    got, expected = read_state_dict(ddp_run / "model.pt")["model"], read_state_dict(single_run / "model.pt")["model"]
    for key in expected:
        assert torch.allclose(got[key], expected[key], rtol=1e-4, atol=1e-5), key


@pytest.mark.real
def test_fine_tuning_torchvision_coco_onto_person_and_car(tmp_path: Path, caplog) -> None:
    """The COCO checkpoint's architecture (frozen BN, eps 0) on a two-class set of COCO names, one step."""
    from class_sets import renamed_set
    from realsize import write_torchvision_r50

    from fpn.data import make_synthetic

    coco = write_torchvision_r50(tmp_path / "fasterrcnn_resnet50_fpn_coco.pth")
    data = make_synthetic(tmp_path / "set", num_train=2, num_val=1, image_size=96)
    names = renamed_set(data, {1: "person", 2: "car"}, "coco-names")
    run = tmp_path / "run"
    argv = ["train", "--data", str(names), "--weights", str(coco), "--out", str(run), "--iters", "1", *FAST]
    with caplog.at_level(logging.INFO):
        assert main([*argv, "model.transform.min_size=96", "model.transform.max_size=128"]) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--weights")]
    assert "carried over 2 (person, car), dropped 78 of the checkpoint's; left out: none" in line
    config = RunConfig.load(run / "config.yaml")
    assert config.model.backbone.depth == 50 and config.model.backbone.norm == "frozen_bn"
    assert config.model.backbone.bn_eps == 0.0 and config.model.class_names == ["person", "car"]
