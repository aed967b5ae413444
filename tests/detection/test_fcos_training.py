"""FCOS learns: tiny-fcos from scratch on two drawn images, torchvision's layout fine-tuned on them, a run on {a, b}
fine-tuned on {b, c}, and torchvision-layout checkpoints inside the wrappers frameworks save them in."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from class_sets import ab_and_bc
from fcos_goldens import torchvision_fcos_state

from fpn.config import to_dict
from fpn.detection import FCOS, build_detector
from fpn.detection.checkpoint import load_detector, read_detector
from fpn.detection.finetune import checkpoint_model_config, init_from_checkpoint
from fpn.engine import build_run_config, train
from fpn.io import read_state_dict
from fpn.ops import box_iou
from fpn.presets import preset

train_module = importlib.import_module("fpn.engine.train")
# Faster R-CNN's overfit scenes (two drawn 128 px images, three classes), read from their module.
_spec = importlib.util.spec_from_file_location("overfit_scenes", Path(__file__).with_name("test_overfit.py"))
overfit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(overfit)
CLASSES, dataset = overfit.CLASSES, overfit.dataset
CLS = ["head.cls_logits.weight", "head.cls_logits.bias"]


def fit(model: FCOS, steps: int, lr: float, warmup: int = 20) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    images, targets = dataset()
    history = []
    model.train()
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
    return history


def recall(model: FCOS, min_score: float = 0.3) -> tuple[float, list[int]]:
    """The share of the training boxes found (same class, IoU >= 0.5, score >= ``min_score``), and the levels."""
    images, targets = dataset()
    model.eval()
    with torch.no_grad():
        results = model(images)
    hits, levels = 0, []
    for result, target in zip(results, targets):
        for box, label in zip(target["boxes"], target["labels"]):
            same = (result["labels"] == label) & (result["scores"] >= min_score)
            if same.any() and box_iou(box[None], result["boxes"][same])[0].max() >= 0.5:
                hits += 1
        levels += result["levels"].tolist()
    return hits / sum(len(t["boxes"]) for t in targets), levels


def small(config):
    config.class_names = list(CLASSES)
    config.transform.min_size = [128]
    config.transform.max_size = 128
    return config


@pytest.mark.slow
def test_tiny_fcos_overfits_two_images():
    torch.manual_seed(0)
    model = build_detector(small(preset("tiny-fcos")))
    history = fit(model, 150, 0.02)
    assert all(torch.isfinite(torch.tensor(history)))
    initial, final = sum(history[:3]) / 3, sum(history[-10:]) / 10
    assert final < 0.5 * initial, f"loss {initial:.3f} -> {final:.3f}"
    found, levels = recall(model)
    assert found >= 0.8, f"recall {found:.2f}"
    assert set(levels) <= {3, 4, 5, 6}


@pytest.mark.slow
def test_torchvision_layout_fine_tunes_on_small_images(tmp_path: Path):
    """torchvision's fcos_resnet50_fpn (the goldens' weights) fine-tuned on three classes at 128 px."""
    path = tmp_path / "fcos_resnet50_fpn.pth"
    torch.save(torchvision_fcos_state(), path)
    config = small(checkpoint_model_config(path))
    config.backbone.trainable_stages = 0  # the head and pyramid only: a few steps on 2 cores
    torch.manual_seed(0)
    model = build_detector(config)
    report = init_from_checkpoint(model, path)
    assert report.kind == "torchvision" and not report.left_out and report.new == list(CLASSES)
    history = fit(model, 40, 0.01, warmup=5)
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:3]) / 3, history
    assert recall(model, min_score=0.2)[0] >= 0.5


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ab_and_bc(tmp_path_factory.mktemp("finetune"))


FAST = ["train.workers=0", "train.warmup_iters=1", "train.lr=0.01", "train.epochs=null", "train.batch_size=1"]


def run_config(data: Path, *overrides: str):
    model = preset("tiny-fcos")
    model.transform.min_size, model.transform.max_size = [96], 128
    return build_run_config({"model": to_dict(model), "data": str(data)}, overrides=[*FAST, *overrides])


def test_a_run_on_b_c_starts_from_the_a_b_checkpoint(sets, tmp_path: Path, monkeypatch, caplog) -> None:
    trained_ab = train(run_config(sets["ab"], "train.iters=2"), tmp_path / "ab", progress=False)
    at_step_0: dict[str, torch.Tensor] = {}
    real_init = train_module.init_from_checkpoint

    def init_and_keep(model, source, class_names):
        report = real_init(model, source, class_names)
        at_step_0.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return report

    monkeypatch.setattr(train_module, "init_from_checkpoint", init_and_keep)
    with caplog.at_level(logging.INFO, logger="fpn.engine.train"):
        out = train(
            run_config(sets["bc"], "train.iters=1", f"train.weights={trained_ab}"), tmp_path / "bc", progress=False
        )
    old = read_state_dict(trained_ab)["model"]
    assert read_state_dict(out)["config"]["class_names"] == ["b", "c"]
    assert read_state_dict(out)["config"]["detector"] == "fcos"
    shared = [k for k in old if k not in CLS]
    assert shared and all(torch.equal(at_step_0[k], old[k]) for k in shared)
    for key in CLS:  # background row 0 kept, b (label 2 -> 1) carried, c fresh
        assert torch.equal(at_step_0[key][0], old[key][0]) and torch.equal(at_step_0[key][1], old[key][2])
    assert not torch.equal(at_step_0[CLS[0]][2], old[CLS[0]][2]) and not torch.equal(
        at_step_0[CLS[0]][2], old[CLS[0]][1]
    )
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--weights")]
    assert line == (
        f"--weights {trained_ab}: loaded {len(shared)} of {len(old)} tensors; re-made head.cls_logits for 1 new class "
        "(c), carried over 1 (b), dropped 1 of the checkpoint's; left out: none"
    )


@pytest.mark.parametrize("wrapper", ["lightning", "model_prefix", "safetensors"])
def test_torchvision_fcos_loads_inside_framework_wrappers(tmp_path: Path, wrapper: str) -> None:
    state = torchvision_fcos_state()
    if wrapper == "lightning":
        path = tmp_path / "epoch=3.ckpt"
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    elif wrapper == "model_prefix":
        path = tmp_path / "detector.pt"
        torch.save({f"model.{k}": v for k, v in state.items()}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "fcos.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    checkpoint = read_detector(path)
    assert checkpoint.kind == "torchvision" and checkpoint.config["detector"] == "fcos"
    model, _ = load_detector(path)
    assert isinstance(model, FCOS)
    assert torch.equal(model.state_dict()["head.centerness.weight"], state["head.regression_head.bbox_ctrness.weight"])
    assert torch.equal(model.state_dict()["head.box_tower.3.norm.bias"], state["head.regression_head.conv.10.bias"])
    assert torch.equal(model.state_dict()["pyramid.extra.p7.weight"], state["backbone.fpn.extra_blocks.p7.weight"])
