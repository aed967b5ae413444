"""The from-scratch recipe in training: EMA (formula, model.pt, exact resume), mosaic closing on schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from fpn.config import to_dict
from fpn.data import make_synthetic
from fpn.engine import RunConfig, TrainConfig, build_run_config, train
from fpn.engine.augmentation import mosaic_open
from fpn.engine.ema import ModelEMA
from fpn.engine.loop import KeyedDataset
from fpn.engine.schedule import Plan
from fpn.errors import ConfigError
from fpn.io import read_state_dict
from fpn.presets import preset

FAST = ["train.workers=0", "train.warmup_iters=2", "train.lr=0.01", "train.epochs=null", "train.batch_size=1"]
RECIPE = [
    "train.mosaic=1.0", "train.close_mosaic=0.4", "train.scale_jitter=0.5", "train.translate=0.1",
    "train.hsv=[0.015,0.7,0.4]", "train.ema=0.9", "train.ema_tau=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_synthetic(tmp_path_factory.mktemp("recipe") / "set", num_train=8, num_val=2, image_size=96)
    spec = yaml.safe_load(path.read_text())
    del spec["val"]  # no evaluation: these runs check weights
    train_only = path.parent / "train-only.yaml"
    train_only.write_text(yaml.safe_dump(spec))
    return train_only


def run_config(data: Path, *overrides: str) -> RunConfig:
    return build_run_config({"model": to_dict(preset("micro-fpn")), "data": str(data)}, overrides=[*FAST, *overrides])


def test_ema_update_is_the_ramped_average_by_hand() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.5)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    w0 = torch.tensor([1.0, 2.0])
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -1.0]]))
    ema.update(model)
    d1 = 0.9 * (1 - math.exp(-1 / 2))
    avg1 = d1 * w0 + (1 - d1) * torch.tensor([3.0, -1.0])
    assert torch.allclose(ema.average["weight"].flatten(), avg1, atol=1e-6)
    assert torch.allclose(ema.average["bias"], torch.tensor([0.5]))  # unchanged weights stay as they are
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 4.0]]))
    ema.update(model)
    d2 = 0.9 * (1 - math.exp(-2 / 2))
    assert torch.allclose(ema.average["weight"].flatten(), d2 * avg1 + (1 - d2) * torch.tensor([0.0, 4.0]), atol=1e-6)
    assert ema.updates == 2
    # applied(): the average inside the block, the model's own weights bit for bit after it.
    before = model.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.weight, ema.average["weight"])
    assert torch.equal(model.weight, before)


def test_model_pt_holds_the_average_and_says_so(data: Path, tmp_path: Path) -> None:
    config = run_config(data, "train.iters=3", "train.ema=0.9", "train.ema_tau=2")
    model_path = train(config, tmp_path / "run", progress=False)
    saved, last = read_state_dict(model_path), read_state_dict(tmp_path / "run" / "last.pt")
    assert saved["ema"] == {"weights": "exponential moving average", "decay": 0.9, "tau": 2.0, "updates": 3}
    average = last["ema"]["average"]
    assert set(average) <= set(saved["model"]) and last["ema"]["updates"] == 3
    for key, value in average.items():
        assert torch.equal(saved["model"][key], value), key
    assert any(not torch.equal(last["model"][k], average[k]) for k in average)  # last.pt keeps the raw weights


def test_resume_with_the_whole_recipe_equals_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    config = run_config(data, "train.iters=5", "train.checkpoint_every=2", *RECIPE)
    reference = train(config, tmp_path / "whole", progress=False)

    def stop_at_3(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "split", progress=False, on_step=stop_at_3)
    assert read_state_dict(tmp_path / "split" / "last.pt")["iteration"] == 2
    resumed = train(None, tmp_path / "split", resume=True, progress=False)
    for name in ("model.pt", "last.pt"):
        expected, got = read_state_dict(reference.parent / name), read_state_dict(resumed.parent / name)
        for key in expected["model"]:
            assert torch.equal(expected["model"][key], got["model"][key]), (name, key)
    expected, got = (
        read_state_dict(reference.parent / "last.pt")["ema"],
        read_state_dict(resumed.parent / "last.pt")["ema"],
    )
    assert expected["updates"] == got["updates"] == 5
    for key in expected["average"]:
        assert torch.equal(expected["average"][key], got["average"][key]), key
    saved = RunConfig.load(tmp_path / "split" / "config.yaml").train
    assert (saved.mosaic, saved.close_mosaic, saved.hsv, saved.ema) == (1.0, 0.4, [0.015, 0.7, 0.4], 0.9)


def test_mosaic_closes_for_the_last_part_of_the_run() -> None:
    cfg = TrainConfig(mosaic=0.5, close_mosaic=0.1)
    by_iterations = Plan(total=100, budget=None)
    assert [mosaic_open(cfg, by_iterations, it, 0.0) for it in (0, 89, 90, 99)] == [True, True, False, False]
    by_time = Plan(total=None, budget=60.0)  # a --minutes run: the same fraction, of the time
    assert [mosaic_open(cfg, by_time, 5, t) for t in (0.0, 53.9, 54.0, 59.0)] == [True, True, False, False]
    assert not mosaic_open(TrainConfig(mosaic=0.0), by_iterations, 0, 0.0)
    with pytest.raises(ConfigError, match="train.close_mosaic"):
        TrainConfig(mosaic=1.0, close_mosaic=1.5).validate()


def test_a_run_and_its_resume_see_mosaic_until_the_close(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    original = KeyedDataset.__getitem__

    def record(self: KeyedDataset, item):
        image, target, key = original(self, item)
        seen.append(item[1])
        return image, target, key

    monkeypatch.setattr(KeyedDataset, "__getitem__", record)
    config = run_config(data, "train.iters=5", "train.checkpoint_every=2", "train.mosaic=1.0", "train.close_mosaic=0.4")

    def stop_at_2(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", progress=False, on_step=stop_at_2)
    train(None, tmp_path / "run", resume=True, progress=False)
    # Mosaic on for the first 60% (iterations 0..2), off for the last 40% (3, 4), across the resume at 2. The
    # loader reads at most a batch ahead with workers=0: the first part may have fetched iteration 2 too.
    flags = seen
    assert flags[:2] == [True, True] and flags[-3:] == [True, False, False], flags
    assert flags.count(False) == 2
