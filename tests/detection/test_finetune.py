"""Fine-tuning from a detection checkpoint: a run trained on {a, b} fine-tuned on {b, c}, torchvision's COCO layout
onto COCO names, other designs, and the one-line refusals."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
import torch
from class_sets import ab_and_bc

from fpn.config import to_dict
from fpn.detection import FasterRCNN
from fpn.detection.finetune import checkpoint_model_config, class_sources, init_from_checkpoint
from fpn.engine import RunConfig, build_run_config, train
from fpn.errors import CheckpointError
from fpn.io import read_state_dict
from fpn.presets import COCO_CLASSES, preset

train_module = importlib.import_module("fpn.engine.train")  # the module; fpn.engine.train is the function
FAST = ["train.workers=0", "train.warmup_iters=1", "train.lr=0.01", "train.epochs=null", "train.batch_size=1"]
CLS, BOX = "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"
CLASS_KEYS = [f"{CLS}.weight", f"{CLS}.bias", f"{BOX}.weight", f"{BOX}.bias"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ab_and_bc(tmp_path_factory.mktemp("finetune"))


def run_config(data: Path, *overrides: str) -> RunConfig:
    return build_run_config({"model": to_dict(preset("micro-fpn")), "data": str(data)}, overrides=[*FAST, *overrides])


@pytest.fixture(scope="module")
def trained_ab(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """micro-fpn trained a few iterations on {a, b}: its model.pt."""
    return train(run_config(sets["ab"], "train.iters=2"), tmp_path_factory.mktemp("ab") / "run", progress=False)


def test_class_sources_match_by_name_and_skip_placeholders() -> None:
    assert class_sources(["a", "b"], ["b", "c"]) == [1, None]
    assert class_sources(list(COCO_CLASSES), ["person", "Traffic_Light", "N/A"]) == [0, 9, None]
    assert class_sources(["Cat", "cat"], ["CAT", "cat"]) == [None, 1]  # ambiguous when folded: exact only


def test_a_run_on_b_c_starts_from_the_a_b_checkpoint(
    sets: dict[str, Path], trained_ab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    at_step_0: dict[str, torch.Tensor] = {}
    real_init = train_module.init_from_checkpoint

    def init_and_keep(model, source, class_names):
        report = real_init(model, source, class_names)
        at_step_0.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return report

    monkeypatch.setattr(train_module, "init_from_checkpoint", init_and_keep)
    config = run_config(sets["bc"], "train.iters=1", f"train.weights={trained_ab}")
    with caplog.at_level(logging.INFO, logger="fpn.engine.train"):
        out = train(config, tmp_path / "run", progress=False)

    old = read_state_dict(trained_ab)["model"]
    assert RunConfig.load(tmp_path / "run" / "config.yaml").train.weights == str(trained_ab)
    assert read_state_dict(out)["run_config"]["train"]["weights"] == str(trained_ab)
    assert read_state_dict(out)["config"]["class_names"] == ["b", "c"]
    shared = [k for k in old if k not in CLASS_KEYS]
    assert shared and all(torch.equal(at_step_0[k], old[k]) for k in shared)
    # b was label 2 and is label 1; background stays row 0; c (label 2) keeps the fresh initialisation.
    for key, rows in ((f"{CLS}.weight", 1), (f"{CLS}.bias", 1), (f"{BOX}.weight", 4), (f"{BOX}.bias", 4)):
        assert torch.equal(at_step_0[key][:rows], old[key][:rows]), key
        assert torch.equal(at_step_0[key][rows : 2 * rows], old[key][2 * rows : 3 * rows]), key
        if key.endswith("weight"):  # c's rows are none of the checkpoint's
            for row in range(3):
                assert not torch.equal(at_step_0[key][2 * rows : 3 * rows], old[key][row * rows : (row + 1) * rows])
    assert old[f"{CLS}.bias"][1:].abs().min() > 0  # the checkpoint's rows did train ...
    assert torch.all(at_step_0[f"{CLS}.bias"][2] == 0) and torch.all(at_step_0[f"{BOX}.bias"][8:] == 0)  # ... c's not

    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--weights")]
    assert line == (
        f"--weights {trained_ab}: loaded {len(shared)} of {len(old)} tensors; re-made "
        "roi_heads.box_predictor.cls_score/bbox_pred for 1 new class (c), carried over 1 (b), dropped 1 of the "
        "checkpoint's; left out: none"
    )


def test_the_same_classes_load_as_they_are(trained_ab: Path) -> None:
    config = checkpoint_model_config(trained_ab)
    assert config.class_names == ["a", "b"] and config.backbone.weights is None
    model = FasterRCNN(config)
    report = init_from_checkpoint(model, trained_ab)
    old = read_state_dict(trained_ab)["model"]
    assert report.same_classes and len(report.loaded) == len(old) and not report.left_out and not report.fresh
    assert all(torch.equal(model.state_dict()[k], old[k]) for k in old)
    assert "kept roi_heads.box_predictor.cls_score/bbox_pred (the same 2 classes)" in report.summary()


def test_another_design_loads_what_fits_and_counts_the_rest(trained_ab: Path) -> None:
    config = checkpoint_model_config(trained_ab)
    config.pyramid.design, config.class_names = "single-map", ["b", "c"]
    torch.manual_seed(0)
    model = FasterRCNN(config)
    report = init_from_checkpoint(model, trained_ab)
    old = read_state_dict(trained_ab)["model"]
    assert report.loaded and report.left_out  # the backbone fits; the pyramid's other levels do not
    assert set(report.loaded) | set(report.left_out) | set(CLASS_KEYS) == set(old)
    assert all(torch.equal(model.state_dict()[k], old[k]) for k in report.loaded)
    assert report.carried == ["b"] and report.new == ["c"]
    assert f"left out: {len(report.left_out)} (" in report.summary()


def test_a_checkpoint_with_no_fitting_tensor_or_corrupt_is_refused_in_one_line(tmp_path: Path) -> None:
    model = FasterRCNN(preset("micro-fpn"))
    renamed = {
        "format": "fpn",
        "config": to_dict(model.config),
        "model": {f"x.{k}": v for k, v in model.state_dict().items()},
    }
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError) as error:
        init_from_checkpoint(model, tmp_path / "renamed.pt")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'renamed.pt'}: no tensor fits") and "\n" not in message
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable") as error:
        init_from_checkpoint(model, tmp_path / "corrupt.pt")
    assert "\n" not in str(error.value)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: neither an fpn checkpoint"):
        checkpoint_model_config(tmp_path / "other.pt")


def test_torchvision_coco_rows_carry_over_to_coco_names(tmp_path: Path) -> None:
    from realsize import write_torchvision_r50

    path = write_torchvision_r50(tmp_path / "fasterrcnn_resnet50_fpn_coco.pth")
    coco = torch.load(path, weights_only=True)
    config = checkpoint_model_config(path)
    assert config.backbone.norm == "frozen_bn" and config.backbone.bn_eps == 0.0  # as load_detector runs it
    assert config.backbone.trainable_stages == 3 and config.backbone.weights is None
    config.class_names = ["person", "car"]
    model = FasterRCNN(config)
    report = init_from_checkpoint(model, path)
    state = model.state_dict()
    # person is COCO slot 1, car slot 3; background row 0.
    for ours, theirs in ((0, 0), (1, 1), (2, 3)):
        name = "roi_heads.box_predictor"
        assert torch.equal(state[f"{CLS}.weight"][ours], coco[f"{name}.cls_score.weight"][theirs])
        assert torch.equal(state[f"{CLS}.bias"][ours], coco[f"{name}.cls_score.bias"][theirs])
        box = slice(4 * ours, 4 * ours + 4)
        assert torch.equal(state[f"{BOX}.weight"][box], coco[f"{name}.bbox_pred.weight"][4 * theirs : 4 * theirs + 4])
    assert torch.equal(state["backbone.conv1.weight"], coco["backbone.body.conv1.weight"])
    (lateral,) = [k for k in coco if k.startswith("backbone.fpn.inner_blocks.0") and k.endswith("weight")]
    assert torch.equal(state["pyramid.lateral.c2.weight"], coco[lateral])
    assert report.kind == "torchvision" and report.carried == ["person", "car"] and not report.new
    assert len(report.loaded) == len(coco) - 4 and not report.left_out and not report.fresh
    assert report.summary() == (
        f"--weights {path}: loaded {len(coco) - 4} of {len(coco)} tensors; re-made "
        "roi_heads.box_predictor.cls_score/bbox_pred for 0 new classes, carried over 2 (person, car), "
        "dropped 78 of the checkpoint's; left out: none"
    )


def test_a_run_stopped_before_its_first_checkpoint_starts_again_from_its_weights(
    sets: dict[str, Path], trained_ab: Path, tmp_path: Path, caplog
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(run_config(sets["bc"], "train.iters=1", f"train.weights={trained_ab}").to_yaml())
    with caplog.at_level(logging.INFO, logger="fpn.engine.train"):
        train(None, run, resume=True, progress=False)
    assert any(r.getMessage().startswith(f"--weights {trained_ab}: loaded") for r in caplog.records)
