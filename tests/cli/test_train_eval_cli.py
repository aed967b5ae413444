"""``fpn train``, ``fpn eval`` and ``fpn models`` end to end, and their one-line errors (exit status 2)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from fpn.cli import main
from fpn.data import make_synthetic
from fpn.engine.run_folder import RunLock
from fpn.io import read_state_dict

FAST = [
    "workers=0",  # a bare key: train.workers
    "train.batch_size=1",
    "lr=1e-2",  # YAML alone would read 1e-2 as a string
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("cli") / "set", num_train=8, num_val=2, image_size=128)


def test_train_then_resume_then_eval(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "micro-fpn", "--out", str(run), "--iters", "2", *FAST]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run)
    for name in ("config.yaml", "log.jsonl", "curves.png", "last.pt", "model.pt", "metrics.json"):
        assert (run / name).is_file(), name
    checkpoint = read_state_dict(run / "model.pt")
    assert checkpoint["run_config"]["train"]["lr"] == 0.01 and checkpoint["iteration"] == 2

    # A longer budget for the same run: it continues from iteration 2 with the run's own config.
    assert main(["train", "--resume", "--out", str(run), "--iters", "3"]) == 0
    assert read_state_dict(run / "last.pt")["iteration"] == 3
    # Once more: the run is complete, nothing is evaluated or logged again.
    log = (run / "log.jsonl").read_text()
    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert (run / "log.jsonl").read_text() == log and read_state_dict(run / "model.pt")["iteration"] == 3
    capsys.readouterr()

    metrics = tmp_path / "metrics.json"
    detections = tmp_path / "detections.json"
    argv = ["eval", "--weights", str(run / "model.pt"), "--data", str(data), "--output", str(metrics)]
    assert main([*argv, "--detections", str(detections), "--device", "cpu", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and "level" in out
    saved = json.loads(metrics.read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"} <= set(saved["metrics"]) and "per_level" in saved
    listed = json.loads(detections.read_text())
    assert sum(row["total"] for row in saved["per_level"].values()) == len(listed)


def test_unknown_config_key_exits_2_naming_it(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--iters", "1", "train.lrr=0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lrr" in err and err.startswith("fpn: error:")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "model.rpn.nms=0.5"]) == 2
    assert "model.rpn.nms" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_folder_in_use_and_a_full_disk_exit_2_with_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", "micro-fpn", "--out", str(run), "--iters", "4", *FAST]
    argv.append("train.checkpoint_every=2")
    with RunLock(run):  # another fpn train's
        assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"fpn: error: {run} is in use by another fpn train (pid {os.getpid()})"

    real_save, saves = torch.save, []

    def disk_full_at_the_second(obj, handle, *args, **kwargs) -> None:
        saves.append(handle.name)
        real_save(obj, handle, *args, **kwargs)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full_at_the_second)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fpn: error: {run / 'last.pt'}: cannot write"), err
    assert "No space left on device" in err and "of iteration 2 is unchanged" in err
    assert read_state_dict(run / "last.pt")["iteration"] == 2


def test_missing_data_yaml_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "data.yaml"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert main(["eval", "--weights", str(tmp_path / "none.pt"), "--data", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_models_lists_parameters_and_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "tiny-fpn"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["preset", "design"] and "GFLOPs" in lines[0]
    row = lines[1].split()
    assert row[0] == "tiny-fpn" and row[-4].endswith("M") and float(row[-3]) > 0  # params, GFLOPs
    assert main(["models", "nonesuch"]) == 2
