"""Two CPU processes (torchrun, gloo) with one image each train the same weights as one process with two.

Why they agree: with ``train.micro_batch = 1`` each image gets its own forward pass and the objective is the
mean of per-image losses over the global batch. One process accumulates ``loss_i / 2`` over its two images;
each of two processes backpropagates its image's ``loss_i / 1`` and DDP averages the gradients over the two
processes: the same gradient. The images, their flips and the anchor/RoI sampling draws are keyed by
``(seed, iteration, slot in the global batch)``, so both runs see the same ones. What remains is floating-point
summation order, hence ``allclose`` instead of equality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fpn.config import to_dict
from fpn.data import make_synthetic
from fpn.detection import FasterRCNN
from fpn.engine import RunConfig, build_run_config, train
from fpn.io import read_state_dict
from fpn.presets import preset

SRC = Path(__file__).resolve().parents[2] / "src"
OVERRIDES = [
    "train.workers=0",
    "train.warmup_iters=1",
    "train.lr=0.02",
    "train.log_every=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_synthetic(tmp_path_factory.mktemp("ddp") / "set", num_train=8, num_val=2, image_size=128)
    spec = yaml.safe_load(path.read_text())
    del spec["val"]  # no evaluation: this test is about the weights
    train_only = path.parent / "train-only.yaml"
    train_only.write_text(yaml.safe_dump(spec))
    return train_only


# The from-scratch recipe: its draws are keyed by the global slot too, and every process keeps the same average.
RECIPE = ["train.mosaic=1.0", "train.scale_jitter=0.5", "train.hsv=[0.015,0.7,0.4]", "train.ema=0.9", "train.ema_tau=2"]


@pytest.mark.parametrize("recipe", [[], RECIPE], ids=["plain", "recipe"])
def test_two_processes_match_one_with_the_same_global_batch(data: Path, tmp_path: Path, recipe: list[str]) -> None:
    ddp_run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "fpn", "train", "--data", str(data), "--model", "micro-fpn", "--out", str(ddp_run), "--iters", "3",
        "--device", "cpu", *OVERRIDES, "train.batch_size=1", *recipe,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(ddp_run)  # printed once, by rank 0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = build_run_config(
            {"model": to_dict(preset("micro-fpn")), "data": str(data)},
            overrides=[
                *OVERRIDES,
                "train.iters=3",
                "train.epochs=null",
                "train.batch_size=2",
                "train.device=cpu",
                *recipe,
            ],
        )
        single = train(config, tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(threads)

    got, expected = read_state_dict(ddp_run / "model.pt")["model"], read_state_dict(single)["model"]
    saved = RunConfig.from_dict(read_state_dict(single)["run_config"])
    torch.manual_seed(saved.train.seed)
    initial = FasterRCNN(saved.model).state_dict()
    moved = max((expected[k].float() - initial[k].float()).abs().max().item() for k in expected)
    assert moved > 1e-3  # the runs did train: agreement is not trivial
    for key in expected:
        assert torch.allclose(got[key], expected[key], rtol=1e-4, atol=1e-5), key

    # Only rank 0 wrote files: one events file, each iteration logged once, the same losses as one process.
    assert len(list(ddp_run.glob("events.out.tfevents.*"))) == 1
    lines = [json.loads(x) for x in (ddp_run / "log.jsonl").read_text().splitlines()]
    single_lines = [json.loads(x) for x in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3]
    for a, b in zip(lines, single_lines):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert read_state_dict(ddp_run / "last.pt")["world_size"] == 2
    if recipe:  # model.pt holds the average, over the same 3 updates as one process's
        assert read_state_dict(ddp_run / "model.pt")["ema"]["updates"] == 3
