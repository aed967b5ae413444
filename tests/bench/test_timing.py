"""``fpn.bench.timing``: stage hooks come and go without a trace; the spread and latency helpers' relations."""

from __future__ import annotations

import pytest
import torch

from fpn.bench import FORWARD_STAGES, STAGES, BenchOptions, prepare, spread
from fpn.bench.timing import forward_latency
from fpn.detection import FasterRCNN
from fpn.presets import preset


def options(**changes) -> BenchOptions:
    base = {"model": "tiny-fpn", "size": (128, 160), "runs": 1, "warmup": 0, "threads": 1, "device": "cpu"}
    return BenchOptions(**{**base, "memory": False, **changes})


def test_stage_timer_leaves_the_model_as_it_was():
    prepared = prepare(options(), torch.device("cpu"))
    model = prepared.model
    with prepared.timer:
        prepared.step()
        assert set(prepared.timer.totals) == set(STAGES["infer"])
    assert "postprocess" not in vars(model.transform)
    for name in FORWARD_STAGES:
        module = getattr(model, name)
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_a_training_iteration_times_the_steps_own_backward_and_update():
    prepared = prepare(options(mode="train", batch=1), torch.device("cpu"))
    with prepared.timer:
        prepared.step()
    assert set(prepared.timer.totals) == set(STAGES["train"])
    assert all(p.grad is None for p in prepared.model.parameters())  # the step holds no gradients afterwards


def test_spread_of_one_and_of_several_runs():
    one = spread([0.5])
    assert one["median_s"] == one["min_s"] == one["max_s"] == 0.5 and one["iqr_s"] == 0
    several = spread([4.0, 1.0, 3.0, 2.0])
    assert several["min_s"] <= several["q25_s"] <= several["median_s"] <= several["q75_s"] <= several["max_s"]
    assert several["iqr_s"] == pytest.approx(several["q75_s"] - several["q25_s"])
    assert several["times_s"] == [4.0, 1.0, 3.0, 2.0]  # in the order they ran


def test_forward_latency_leaves_the_model_in_eval_mode():
    config = preset("micro-fpn")
    model = FasterRCNN(config).train()
    assert forward_latency(model, torch.rand(3, 64, 80), runs=2, warmup=1) > 0
    assert not model.training
