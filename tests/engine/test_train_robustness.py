"""Nothing lost (issue 14): the run folder's lock, Ctrl-C / SIGTERM / kill -9 and resume, budgets changed on
resume, data with no objects, and writes that fail (full disk, read-only folder).

The subprocess tests run the real ``fpn train`` and kill it; they compare the final weights with an
uninterrupted run's tensor by tensor (``torch.equal``): on the CPU a resumed run is exact.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from fpn.config import to_dict
from fpn.data import make_synthetic
from fpn.engine import RunConfig, Schedule, build_run_config, train
from fpn.engine.run_folder import LOCK_NAME, RunLock
from fpn.engine.run_log import progress_line
from fpn.engine.schedule import Plan
from fpn.engine.stop import StoppedAtOnce, TrainingInterrupted, exit_status
from fpn.errors import ConfigError, DataError, FpnError
from fpn.io import read_state_dict
from fpn.presets import preset

SRC = Path(__file__).resolve().parents[2] / "src"
FAST = ["train.workers=0", "train.warmup_iters=2", "train.lr=0.01", "train.epochs=null", "train.batch_size=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("robust") / "set", num_train=8, num_val=2, image_size=128)


def variant(data: Path, path: Path, edit: Callable[[dict], object]) -> Path:
    """A dataset YAML at ``path``: ``data``'s with its file paths made absolute, then ``edit(spec)``."""
    spec = yaml.safe_load(data.read_text())
    for split in ("train", "val"):
        spec[split] = {key: str(data.parent / value) for key, value in spec[split].items()}
    edit(spec)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def train_only(data: Path) -> Path:
    return variant(data, data.parent / "train-only.yaml", lambda spec: spec.pop("val"))  # no evaluations


def run_config(data: Path, *overrides: str) -> RunConfig:
    return build_run_config({"model": to_dict(preset("micro-fpn")), "data": str(data)}, overrides=[*FAST, *overrides])


def assert_same_weights(expected_path: Path, got_path: Path) -> None:
    expected, got = read_state_dict(expected_path)["model"], read_state_dict(got_path)["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------- the lock


def test_a_second_run_into_a_locked_folder_is_refused_naming_it(train_only: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLock(run):  # another fpn train holds the folder (a second open file: flock conflicts in-process too)
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(FpnError) as info:
            train(run_config(train_only, "train.iters=1"), run, progress=False)
        assert str(info.value) == f"{run} is in use by another fpn train (pid {os.getpid()})"
        assert not (run / "log.jsonl").exists()  # the holder's files untouched
    assert not run.exists()  # the lock made the folder and nothing else was written: gone again
    # A killed run's lock file is not a lock (the kernel dropped it); its temporaries are cleared.
    run.mkdir()
    (run / LOCK_NAME).write_text("12345\n")
    (run / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    train(run_config(train_only, "train.iters=1"), run, progress=False)
    assert (run / "model.pt").is_file() and not (run / LOCK_NAME).exists()
    assert not list(run.glob(".*.tmp"))


# ------------------------------------------------------------------------------------- signals, in-process


def test_sigint_checkpoints_the_iteration_and_resume_is_exact(train_only: Path, tmp_path: Path) -> None:
    overrides = ("train.iters=5", "train.checkpoint_every=100", "train.log_every=1", "model.transform.min_size=[80,96]")
    config = run_config(train_only, *overrides)
    reference = train(config, tmp_path / "whole", progress=False)

    def ctrl_c_at_3(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 3:
            signal.raise_signal(signal.SIGINT)  # its handler runs before this returns

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(config, tmp_path / "split", progress=False, on_step=ctrl_c_at_3)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert isinstance(info.value, KeyboardInterrupt) and info.value.iteration == 3
    assert info.value.resume_command() == f"fpn train --out {tmp_path / 'split'} --resume"
    assert read_state_dict(tmp_path / "split" / "last.pt")["iteration"] == 3  # not the 0 of checkpoint_every
    resumed = train(None, tmp_path / "split", resume=True, progress=False)
    assert_same_weights(reference, resumed)
    assert [r["loss"] for r in records(tmp_path / "split")] == [r["loss"] for r in records(tmp_path / "whole")]


def sigterm_twice(iteration: int, losses: dict[str, float]) -> None:
    """An ``on_step`` that sends SIGTERM twice: the second arrives before the first one's checkpoint."""
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)


def test_a_second_signal_stops_at_once(train_only: Path, tmp_path: Path) -> None:
    with pytest.raises(StoppedAtOnce) as info:
        train(run_config(train_only, "train.iters=5"), tmp_path / "run", progress=False, on_step=sigterm_twice)
    assert isinstance(info.value, KeyboardInterrupt) and not isinstance(info.value, TrainingInterrupted)
    assert exit_status(info.value) == 128 + signal.SIGTERM  # what `fpn train` exits with then
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_fpn_train_stopped_by_a_second_sigterm_exits_143(
    train_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fpn.cli import main

    engine_train = sys.modules["fpn.engine.train"]  # the module: ``fpn.engine.train`` is also the function

    original = engine_train.train
    monkeypatch.setattr(engine_train, "train", lambda *args, **kwargs: original(*args, **kwargs, on_step=sigterm_twice))
    code = main(["train", "--data", str(train_only), "--model", "micro-fpn", "--iters", "5", "--out",
                 str(tmp_path / "run"), *FAST])  # fmt: skip
    assert code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "fpn: interrupted" in err and "Traceback" not in err


def test_resuming_a_run_stopped_before_its_first_checkpoint_starts_it_again(train_only: Path, tmp_path: Path) -> None:
    class Killed(Exception):
        pass

    def killed_at_1(iteration: int, losses: dict[str, float]) -> None:
        raise Killed

    config = run_config(train_only, "train.iters=3", "train.log_every=1")
    with pytest.raises(Killed):
        train(config, tmp_path / "run", progress=False, on_step=killed_at_1)
    assert not (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "config.yaml").is_file()
    resumed = train(None, tmp_path / "run", resume=True, progress=False)  # the run's own config.yaml
    assert_same_weights(train(config, tmp_path / "whole", progress=False), resumed)
    assert [r["iteration"] for r in records(tmp_path / "run")] == [1, 2, 3]


# ---------------------------------------------------------------------------------- kill -9, SIGTERM, real


def fpn_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "fpn", "train", *args]


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    return env


KILL_ITERS = 30
KILL_OVERRIDES = [
    "train.batch_size=1", "train.warmup_iters=3", "train.lr=0.01", "train.checkpoint_every=3", "train.log_every=2",
    "model.transform.min_size=[80,96]",
]  # fmt: skip


def kill_run(data: Path, out: Path, workers: int) -> list[str]:
    """The ``fpn train`` command line of the runs below (the number of loading processes does not matter)."""
    options = ["--data", str(data), "--model", "micro-fpn", "--iters", str(KILL_ITERS), "--device", "cpu"]
    return fpn_train(*options, "--out", str(out), *KILL_OVERRIDES, f"train.workers={workers}")


@pytest.fixture(scope="module")
def cli_reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted ``fpn train``'s folder."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(kill_run(data, out, 0), env=environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def start_and_wait_for_a_checkpoint(command: list[str], out: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "last.pt").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within a minute"
        time.sleep(0.01)
    return process


def resume_to_the_end(out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(fpn_train("--out", str(out), "--resume"), env=environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_kill_9_at_any_moment_then_resume_ends_with_the_same_weights(
    data: Path, cli_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # A data-loading process too: forked, it shares the lock's file, and must not keep the folder locked.
    process = start_and_wait_for_a_checkpoint(kill_run(data, out, 1), out)
    time.sleep(random.Random(14).uniform(0.0, 0.8))  # somewhere in the iterations, checkpoints, plots
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed_at = read_state_dict(out / "last.pt")["iteration"]
    assert 3 <= killed_at < KILL_ITERS

    resumed = resume_to_the_end(out)
    assert f"resuming {out} at iteration {killed_at} of {KILL_ITERS} iterations" in resumed.stderr
    assert_same_weights(cli_reference / "model.pt", out / "model.pt")
    timing = ("sec_per_iter", "elapsed")
    expected = [{k: v for k, v in r.items() if k not in timing} for r in records(cli_reference)]
    assert [{k: v for k, v in r.items() if k not in timing} for r in records(out)] == expected
    assert not list(out.glob(".*"))  # no lock, no temporaries of a killed write


def test_sigterm_checkpoints_prints_the_resume_command_and_exits_143(
    data: Path, cli_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    process = start_and_wait_for_a_checkpoint(kill_run(data, out, 0), out)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]  # the shell's code for SIGTERM
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(r"fpn: interrupted at iteration (\d+); resume with: fpn train --out (\S+) --resume", last)
    assert match and match[2] == str(out), last
    assert read_state_dict(out / "last.pt")["iteration"] == int(match[1])
    assert "Traceback" not in err

    resume_to_the_end(out)
    assert_same_weights(cli_reference / "model.pt", out / "model.pt")


# ------------------------------------------------------------------------------- finished runs, budgets


def test_resuming_a_finished_run_says_so_and_changes_nothing(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    train(run_config(data, "train.iters=2"), run, progress=False)
    files = {name: (run / name).read_bytes() for name in ("log.jsonl", "model.pt", "last.pt", "metrics.json")}
    with caplog.at_level(logging.INFO, logger="fpn"):
        assert train(None, run, resume=True, progress=False) == run / "model.pt"
    said = [r.getMessage() for r in caplog.records if r.name.startswith("fpn.engine")]
    assert said == [
        f"{run}: the run is already complete (iteration 2, budget 2 iterations); to train longer, resume with a "
        "larger --iters or --minutes"
    ]
    assert {name: (run / name).read_bytes() for name in files} == files

    # Killed during the final evaluation: last.pt is at the end but model.pt is missing. Resume finishes.
    (run / "model.pt").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fpn"):
        train(None, run, resume=True, progress=False)
    assert "the budget is spent: evaluating and writing model.pt" in caplog.text
    assert [r["iteration"] for r in records(run) if r["type"] == "eval"] == [2]  # evaluated again, not twice
    assert read_state_dict(run / "model.pt")["iteration"] == 2


def test_extending_a_finished_step_run_goes_on_at_its_final_learning_rate(
    train_only: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    overrides = ("train.warmup_iters=0", "train.steps=[0.5]", "train.log_every=1")
    train(run_config(train_only, "train.iters=4", *overrides), run, progress=False)
    with caplog.at_level(logging.INFO, logger="fpn"):
        train(run_config(train_only, "train.iters=6", *overrides), run, resume=True, progress=False)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming"))
    assert line == (
        f"resuming {run} at iteration 4 with the budget 4 iterations -> 6 iterations; "
        "the step schedule had ended: training goes on at its final lr 1.00e-03"
    )
    lrs = [r["lr"] for r in records(run)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.001, 0.001])  # no restart at 0.01


def test_extending_an_interrupted_cosine_run_continues_its_curve(train_only: Path, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop_at_2(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 2:
            raise Stop

    run = tmp_path / "run"
    overrides = ("train.warmup_iters=0", "train.schedule=cosine", "train.log_every=1", "train.checkpoint_every=2")
    with pytest.raises(Stop):
        train(run_config(train_only, "train.iters=4", *overrides), run, progress=False, on_step=stop_at_2)
    train(run_config(train_only, "train.iters=8", *overrides), run, resume=True, progress=False)
    cosine = Schedule(lr=0.01, warmup_iters=0, warmup_factor=1.0, kind="cosine", steps=(), gamma=0.1)
    # Iterations 0, 1 on the 4-iteration plan; from 2 on, the remaining half of the curve over 6 iterations.
    progress = [0 / 4, 1 / 4, *(0.5 + 0.5 * (it - 2) / 6 for it in range(2, 8))]
    assert [r["lr"] for r in records(run)] == pytest.approx([cosine(it, p) for it, p in enumerate(progress)])
    # Extending it once it has ended is refused: its learning rate is 0.
    with pytest.raises(ConfigError, match=r"last.pt: the cosine schedule ended at iteration 8 with learning rate 0"):
        train(run_config(train_only, "train.iters=10", *overrides), run, resume=True, progress=False)


def test_plan_is_exact_unchanged_and_continuous_when_the_budget_changes() -> None:
    fresh = Plan(total=90, budget=None)
    assert [fresh.progress(it, 0.0) for it in range(91)] == [it / 90 for it in range(91)]  # as before plans
    assert fresh.resumed(90, 600.0, 30, 12.0) == Plan(90, 600.0)  # a time limit added: same progress
    longer = fresh.resumed(180, None, 30, 12.0)
    assert longer.progress(30, 0.0) == pytest.approx(fresh.progress(30, 0.0))  # no jump
    assert longer.progress(105, 0.0) == pytest.approx(1 / 3 + 2 / 3 * 0.5) and longer.progress(180, 0.0) == 1.0
    assert Plan.from_state(longer.state_dict()) == longer
    timed = Plan(total=None, budget=300.0).resumed(None, 600.0, 50, 150.0)
    assert timed.progress(50, 150.0) == pytest.approx(0.5) and timed.progress(99, 375.0) == pytest.approx(0.75)
    to_iterations = Plan(total=None, budget=300.0).resumed(100, None, 50, 150.0)
    assert to_iterations.progress(50, 0.0) == pytest.approx(0.5) and to_iterations.progress(75, 0.0) == 0.75


# ------------------------------------------------------------------------------------------- the data


def without_objects(data: Path, split: str, tmp_path: Path) -> Path:
    """A copy of the dataset YAML whose ``split`` annotations have no objects."""
    annotations = json.loads((data.parent / f"{split}.json").read_text())
    empty = tmp_path / f"{split}-empty.json"
    empty.write_text(json.dumps({**annotations, "annotations": []}))
    return variant(data, tmp_path / f"no-{split}-objects.yaml", lambda spec: spec[split].update(annotations=str(empty)))


def test_a_training_split_without_objects_is_refused_naming_its_file(data: Path, tmp_path: Path) -> None:
    no_boxes = without_objects(data, "train", tmp_path)
    with pytest.raises(DataError) as info:
        train(run_config(no_boxes, "train.iters=1"), tmp_path / "run", progress=False)
    assert str(info.value).startswith(str(tmp_path / "train-empty.json"))
    assert "no objects" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_val_split_without_objects_says_ap_is_undefined(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="fpn"):
        train(run_config(without_objects(data, "val", tmp_path), "train.iters=1"), tmp_path / "run", progress=False)
    assert "the val split has no objects, so AP is undefined" in caplog.text
    assert re.search(r"iteration 1: AP undefined \(the val split has no objects; \d+ detections\)", caplog.text)
    assert "None" not in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["AP"] is None


def test_progress_lines_have_one_format_for_every_budget() -> None:
    record = {"iteration": 20, "loss": 1.23456, "lr": 0.02, "sec_per_iter": 0.5, "elapsed": 40.0}
    by_iterations = progress_line(record, 100, None)
    by_minutes = progress_line(record, None, 5 * 60.0)
    assert by_iterations == "iter 20/100: loss 1.2346, lr 2.00e-02, elapsed 0:40, eta 0:40"
    assert by_minutes == "iter 20/~540: loss 1.2346, lr 2.00e-02, elapsed 0:40, eta 4:20"
    shape = r"iter \d+/~?\d+: loss [\d.]+, lr [\d.e+-]+, elapsed \d+:\d\d, eta \d+:\d\d"
    assert re.fullmatch(shape, by_iterations) and re.fullmatch(shape, by_minutes)


# ------------------------------------------------------------------------------------ failing writes


def test_a_full_disk_at_a_checkpoint_stops_with_one_line_and_keeps_the_last_one(
    train_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    kept: dict[str, bytes] = {}
    real_save = torch.save

    def half_then_full(obj, handle, *args, **kwargs) -> None:
        real_save(obj, handle, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def disk_full_after_2(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 2:
            kept["last.pt"] = (run / "last.pt").read_bytes()
            monkeypatch.setattr(torch, "save", half_then_full)

    config = run_config(train_only, "train.iters=5", "train.checkpoint_every=2")
    with pytest.raises(FpnError) as info:
        train(config, run, progress=False, on_step=disk_full_after_2)
    message = str(info.value)
    assert message.startswith(f"{run / 'last.pt'}: cannot write") and "\n" not in message
    assert "No space left on device" in message and f"{run / 'last.pt'} of iteration 2 is unchanged" in message
    assert (run / "last.pt").read_bytes() == kept["last.pt"]
    assert not list(run.glob(".last.pt.*")) and not (run / "model.pt").exists() and not (run / LOCK_NAME).exists()


def test_a_read_only_folder_at_a_checkpoint_stops_with_one_line(
    train_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    run = tmp_path / "run"
    kept: dict[str, bytes] = {}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def read_only_after_2(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 2:
            kept["last.pt"] = (run / "last.pt").read_bytes()
            kept["config.yaml"] = (run / "config.yaml").read_bytes()
            monkeypatch.setattr(tempfile, "mkstemp", read_only)

    config = run_config(train_only, "train.iters=5", "train.checkpoint_every=2", "train.log_every=100")
    with pytest.raises(FpnError, match=r"last\.pt: cannot write.*Read-only file system") as info:
        train(config, run, progress=False, on_step=read_only_after_2)
    assert "\n" not in str(info.value)
    assert (run / "last.pt").read_bytes() == kept["last.pt"]
    assert (run / "config.yaml").read_bytes() == kept["config.yaml"]
