"""Training: the run folder's files, exact resume, divergence, the schedule, data order and the run config."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from fpn.config import to_dict
from fpn.data import SYNTHETIC_CLASSES, make_synthetic
from fpn.detection.checkpoint import load_detector
from fpn.engine import RunConfig, Schedule, TrainConfig, TrainingDiverged, build_run_config, train
from fpn.engine.distributed import ShardedBatchSampler
from fpn.errors import ConfigError
from fpn.io import read_state_dict
from fpn.presets import preset

# The micro-fpn preset (tiny-fpn, smaller still: 96 px images, few proposals) with quick training settings.
FAST = [
    "train.workers=0",
    "train.warmup_iters=2",
    "train.lr=0.01",
    "train.epochs=null",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "set", num_train=8, num_val=4, image_size=128)


@pytest.fixture(scope="module")
def train_only(data: Path) -> Path:
    """The same set without its val split: runs that skip evaluation."""
    spec = yaml.safe_load(data.read_text())
    del spec["val"]
    path = data.parent / "train-only.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_config(data: Path, *overrides: str) -> RunConfig:
    return build_run_config({"model": to_dict(preset("micro-fpn")), "data": str(data)}, overrides=[*FAST, *overrides])


def test_run_writes_its_folder(data: Path, tmp_path: Path) -> None:
    config = run_config(data, "train.iters=3", "train.batch_size=2", "train.log_every=2", "train.eval_every=2")
    out = train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert out == run / "model.pt"
    for name in ("config.yaml", "log.jsonl", "curves.png", "last.pt", "model.pt", "metrics.json"):
        assert (run / name).is_file(), name
    assert len(list(run.glob("events.out.tfevents.*"))) == 1

    saved = RunConfig.load(run / "config.yaml")
    assert saved.model.class_names == list(SYNTHETIC_CLASSES)  # from the data, not the preset's "object"
    assert saved.train.iters == 3

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iteration"] for r in train_lines] == [2, 3]
    assert [r["iteration"] for r in evals] == [2, 3]
    assert {"loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "lr"} <= set(
        train_lines[0]
    )
    assert all(math.isfinite(r["loss"]) for r in train_lines)
    assert "AP" in evals[0] and "per_level" in evals[0]

    model, checkpoint = load_detector(run / "model.pt")
    assert model.config.class_names == list(SYNTHETIC_CLASSES) and checkpoint["iteration"] == 3
    last = read_state_dict(run / "last.pt")
    assert last["iteration"] == 3 and {"optimizer", "rng", "scheduler", "run_config"} <= set(last)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["metrics"]) >= {"AP", "AP50", "APs", "AR100"}


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_weights(train_only: Path, tmp_path: Path) -> None:
    # Multi-scale sizes and flips on: every random draw has to be replayed exactly.
    overrides = ("train.iters=5", "train.batch_size=1", "train.checkpoint_every=2", "train.log_every=1")
    config = run_config(train_only, *overrides, "model.transform.min_size=[80,96]", "train.schedule=cosine")
    reference = train(config, tmp_path / "whole", progress=False)

    def stop_at_3(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "split", progress=False, on_step=stop_at_3)
    assert read_state_dict(tmp_path / "split" / "last.pt")["iteration"] == 2
    resumed = train(None, tmp_path / "split", resume=True, progress=False)

    expected, got = read_state_dict(reference)["model"], read_state_dict(resumed)["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # The interrupted part's line for iteration 3 was replaced, not duplicated.
    lines = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4, 5]
    whole = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == [r["loss"] for r in whole]


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bf16 instructions")
def test_amp_on_the_cpu_trains_in_bf16_and_channels_last_off_gives_the_same_losses(train_only: Path, tmp_path: Path):
    from fpn.engine.train import amp_dtype

    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    overrides = ("train.iters=2", "train.batch_size=1", "train.log_every=1")
    runs = {}
    for name, extra in (("nhwc", ()), ("nchw", ("train.channels_last=false",)), ("bf16", ("train.amp=true",))):
        train(run_config(train_only, *overrides, *extra), tmp_path / name, progress=False)
        lines = (tmp_path / name / "log.jsonl").read_text().splitlines()
        runs[name] = [json.loads(x)["loss"] for x in lines]
    # Channels-last is a memory layout: the same losses to float rounding.
    assert runs["nhwc"] == pytest.approx(runs["nchw"], rel=1e-4)
    # bf16 autocast computes with 8-bit mantissas: close, and finite, but not equal.
    assert all(math.isfinite(v) for v in runs["bf16"])
    assert runs["bf16"] == pytest.approx(runs["nchw"], rel=0.05)
    assert runs["bf16"] != runs["nchw"]


def test_divergence_stops_with_a_clear_message(train_only: Path, tmp_path: Path) -> None:
    config = run_config(train_only, "train.iters=6", "train.lr=1e8", "train.warmup_iters=0", "train.checkpoint_every=1")
    with pytest.raises(TrainingDiverged) as info:
        train(config, tmp_path / "run", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(
        r"training diverged at iteration \d+ \(.+ is (nan|inf|-inf)\); last good checkpoint: .+", message
    )
    assert message.endswith(str(tmp_path / "run" / "last.pt"))
    _, checkpoint = load_detector(tmp_path / "run" / "last.pt")  # still a good checkpoint
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model.pt").exists()


def test_minutes_budget_stops_cleanly(train_only: Path, tmp_path: Path) -> None:
    # A budget of a few milliseconds: one iteration, then the usual end (checkpoint, model.pt). Loading in a
    # worker process here, to cover that path too.
    config = run_config(train_only, "train.minutes=0.0001", "train.workers=1")
    assert config.train.iters is None and config.train.epochs is None
    model_path = train(config, tmp_path / "run", progress=False)
    assert read_state_dict(model_path)["iteration"] == 1
    assert read_state_dict(tmp_path / "run" / "last.pt")["elapsed"] > 0


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(train_only: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(run_config(train_only, "train.iters=1"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        train(None, tmp_path / "empty", resume=True, progress=False)


def test_schedule_warmup_step_and_cosine() -> None:
    step = Schedule(lr=0.1, warmup_iters=10, warmup_factor=0.01, kind="step", steps=(0.5, 0.75), gamma=0.1)
    assert step(0, 0.0) == pytest.approx(0.001)
    assert step(5, 0.05) == pytest.approx(0.1 * (0.01 * 0.5 + 0.5))
    assert step(10, 0.1) == pytest.approx(0.1)
    assert step(49, 0.49) == pytest.approx(0.1)
    assert step(50, 0.5) == pytest.approx(0.01)
    assert step(80, 0.8) == pytest.approx(0.001)
    cosine = Schedule(lr=0.1, warmup_iters=0, warmup_factor=1.0, kind="cosine", steps=(), gamma=0.1)
    assert cosine(0, 0.0) == pytest.approx(0.1)
    assert cosine(50, 0.5) == pytest.approx(0.05)
    assert cosine(100, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert cosine(5, 0.25) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_sampler_shards_one_order_and_resumes() -> None:
    single = ShardedBatchSampler(10, 4, seed=7)
    ranks = [ShardedBatchSampler(10, 2, seed=7, rank=r, world_size=2) for r in range(2)]
    assert single.per_epoch == 2 == ranks[0].per_epoch
    for it in range(7):
        assert single.batch(it) == ranks[0].batch(it) + ranks[1].batch(it)
    epoch0 = [slot.index for it in range(2) for slot in single.batch(it)]
    assert len(set(epoch0)) == 8  # no repeats inside an epoch
    assert [s.index for s in single.batch(2)] != [s.index for s in single.batch(0)]  # a new permutation
    resumed = iter(ShardedBatchSampler(10, 4, seed=7, start=3))
    assert next(resumed) == single.batch(3)
    assert ShardedBatchSampler(3, 4, seed=0).batch(0).__len__() == 4  # a set smaller than a batch repeats


def test_run_config_round_trip_and_overrides(tmp_path: Path) -> None:
    config = build_run_config(
        {"model": to_dict(preset("tiny-fpn"))}, overrides=["lr=0.05", "model.rpn.nms_thresh=0.6", "data=x.yaml"]
    )
    assert config.train.lr == 0.05 and config.model.rpn.nms_thresh == 0.6 and config.data == "x.yaml"
    (tmp_path / "run.yaml").write_text(config.to_yaml())
    assert RunConfig.load(tmp_path / "run.yaml") == config
    partial = tmp_path / "partial.yaml"
    partial.write_text("train: {schedule: cosine}\nmodel: {rpn: {nms_thresh: 0.5}}\n")
    merged = build_run_config({"model": to_dict(preset("tiny-fpn"))}, config_file=partial)
    assert merged.train.schedule == "cosine" and merged.model.rpn.nms_thresh == 0.5
    assert merged.model.backbone.width == preset("tiny-fpn").backbone.width  # the rest kept
    with pytest.raises(ConfigError, match="train.lrr"):
        build_run_config({}, overrides=["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.schedule"):
        TrainConfig(schedule="linear").validate()
    with pytest.raises(ConfigError, match="budget"):
        TrainConfig(iters=None, epochs=None, minutes=None).validate()
