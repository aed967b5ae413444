"""RetinaNet's parts: anchors, head initialisation, the losses against torchvision's definition, levels and
counts, the optimized path, the torchvision layout (wrappers, v2, FCOS kept apart), fine-tuning {a, b} -> {b, c}."""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path

import pytest
import torch
from class_sets import ab_and_bc
from retinanet_golden import torchvision_state

from fpn.config import to_dict
from fpn.detection import RetinaNet, build_detector
from fpn.detection.checkpoint import load_detector, read_detector
from fpn.detection.retinanet import octave_sizes
from fpn.engine import build_run_config, train
from fpn.errors import CheckpointError
from fpn.io import read_state_dict
from fpn.ops.losses import sigmoid_focal_loss
from fpn.presets import preset

train_module = importlib.import_module("fpn.engine.train")
FAST = ["train.workers=0", "train.warmup_iters=1", "train.lr=0.01", "train.epochs=null", "train.batch_size=1"]
CLS = ["head.cls_logits.weight", "head.cls_logits.bias"]


def micro_retinanet(classes: list[str] | None = None):
    """micro-fpn's trunk (96 px) with RetinaNet on P3-P7: seconds per test."""
    config = preset("micro-fpn")
    config.detector = "retinanet"
    config.pyramid.finest, config.pyramid.extra = "c3", "p6p7-p5"
    config.retinanet.num_convs = 1
    config.class_names = list(classes or ["a", "b"])
    return config


def test_anchor_sizes_are_torchvisions_thirds_of_an_octave_truncated():
    expected = [s for x in [32, 64, 128, 256, 512] for s in (x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3)))]
    assert octave_sizes([32, 64, 128, 256, 512], 3) == expected
    model = RetinaNet(preset("retinanet-r50"))
    assert model.anchor_generator.num_anchors == 9
    assert model.anchor_sizes() == {f"p{k}": tuple(expected[3 * (k - 3) : 3 * (k - 2)]) for k in range(3, 8)}


def test_head_starts_at_the_prior_probability():
    model = RetinaNet(preset("retinanet-r50"))
    head = model.head
    assert torch.allclose(head.cls_logits.bias, torch.tensor(-math.log(99.0)))
    assert torch.all(head.bbox_pred.bias == 0)
    for conv in (head.cls_logits, head.bbox_pred, head.cls_subnet[0].conv, head.box_subnet[3].conv):
        assert abs(float(conv.weight.detach().std()) - 0.01) < 1e-3
    assert len(head.cls_subnet) == 4 and head.cls_logits.out_channels == 9 * 91


def reference_losses(model: RetinaNet, logits, deltas, anchors, targets) -> tuple[float, float]:
    """torchvision's compute_loss written out image by image (its loops, its selections)."""
    decoder, cls_losses, box_losses = model.decoder, [], []
    for lg, dl, target in zip(logits, deltas, targets):
        if target["boxes"].numel() == 0:
            matched = torch.full((len(anchors),), -1)
        else:
            from fpn.ops import box_iou

            matched = decoder.matcher(box_iou(target["boxes"], anchors))
        fg = matched >= 0
        goal = torch.zeros_like(lg)
        goal[fg, target["labels"][matched[fg]]] = 1.0
        valid = matched != -2
        cls_losses.append(sigmoid_focal_loss(lg[valid], goal[valid], reduction="sum") / max(1, int(fg.sum())))
        wanted = decoder.box_coder.encode(target["boxes"][matched[fg]], anchors[fg])
        box_losses.append((dl[fg] - wanted).abs().sum() / max(1, int(fg.sum())))
    return float(sum(cls_losses) / len(targets)), float(sum(box_losses) / len(targets))


def test_losses_are_torchvisions_per_image_sums_over_the_foreground():
    torch.manual_seed(0)
    model = RetinaNet(micro_retinanet())
    sizes = {lv.name: (-(-96 // lv.stride), -(-128 // lv.stride)) for lv in model.levels}  # ceil
    anchors, per_level = model.anchor_generator((96, 128), sizes)
    logits, deltas = torch.randn(3, len(anchors), 3), 0.1 * torch.randn(3, len(anchors), 4)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0], [50.0, 20.0, 110.0, 90.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},  # a negative image
        {"boxes": torch.tensor([[3.0, 3.0, 20.0, 17.0]]), "labels": torch.tensor([2])},
    ]
    losses = model.decoder.losses((logits, deltas), anchors, per_level, targets)
    cls, box = reference_losses(model, logits, deltas, anchors, targets)
    assert losses["loss_classifier"].item() == pytest.approx(cls, rel=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx(box, rel=1e-5)
    assert sum(model.decoder.last_counts["positives"]) > 0


def test_detections_keep_their_level_and_the_counts_add_up():
    torch.manual_seed(0)
    model = RetinaNet(micro_retinanet()).eval()
    model.config.retinanet.score_thresh = 0.005  # an untrained model scores ~0.01 (its prior)
    with torch.no_grad():
        (out,) = model([torch.rand(3, 96, 120)])
    counts = model.level_counts()
    assert list(counts) == ["p3", "p4", "p5", "p6", "p7"]
    assert len(out["levels"]) == sum(row["detections"] for row in counts.values()) > 0
    for name, row in counts.items():
        assert int((out["levels"] == int(name[1:])).sum()) == row["detections"] <= row["candidates"]
    assert (out["labels"] >= 0).all() and (out["labels"] < model.config.num_classes).all()
    assert model.stages() == ("head", "decoder")


def test_optimized_path_gives_the_plain_paths_detections(tmp_path):
    """fp32: folded BatchNorms, channels-last, fused blocks (no Winograd below 128 channels here)."""
    config = preset("retinanet-r50")
    config.transform.min_size, config.transform.max_size = [160], 224
    model = build_detector(config)
    model.load_state_dict({k: v for k, v in load_detector_weights(tmp_path).items()})
    images = [torch.rand(3, 150, 201, generator=torch.Generator().manual_seed(1))]
    with torch.inference_mode():
        plain = model.eval()(images)[0]
        fast = model.optimize_for_inference()(images)[0]
    assert len(plain["boxes"]) > 0 and len(fast["boxes"]) == len(plain["boxes"])
    assert torch.allclose(fast["boxes"], plain["boxes"], atol=1e-2) and torch.equal(fast["labels"], plain["labels"])
    assert torch.allclose(fast["scores"], plain["scores"], atol=1e-4) and torch.equal(fast["levels"], plain["levels"])


def load_detector_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    path = tmp_path / "tv.pth"
    torch.save(torchvision_state(), path)
    return dict(read_detector(path).weights)


def test_wrapped_torchvision_state_dicts_load(tmp_path):
    """Lightning's ``state_dict``, a ``model.`` prefix, a ``.safetensors`` file: the same weights."""
    from safetensors.torch import save_file

    state = torchvision_state()
    files = {"lightning.ckpt": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}}
    files["prefixed.pth"] = {f"model.{k}": v for k, v in state.items()}
    for name, payload in files.items():
        torch.save(payload, tmp_path / name)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    plain = read_detector(_save(tmp_path / "plain.pth", state)).weights
    for name in [*files, "weights.safetensors"]:
        checkpoint = read_detector(tmp_path / name)
        assert checkpoint.kind == "torchvision" and checkpoint.config["detector"] == "retinanet", name
        assert checkpoint.weights.keys() == plain.keys()
        assert all(torch.equal(checkpoint.weights[k], plain[k]) for k in plain), name


def _save(path: Path, state) -> Path:
    torch.save(state, path)
    return path


def test_v2_is_refused_by_name_and_fcos_is_not_taken_for_retinanet(tmp_path):
    state = torchvision_state()
    gn = dict(state, **{"head.classification_head.conv.0.1.weight": torch.ones(256)})
    c5 = dict(state, **{"backbone.fpn.extra_blocks.p6.weight": torch.zeros(256, 2048, 3, 3)})
    for name, v2 in (("gn.pth", gn), ("c5.pth", c5)):
        with pytest.raises(CheckpointError, match=r"retinanet_resnet50_fpn_v2 is not supported"):
            read_detector(_save(tmp_path / name, v2))
    fcos = dict(state, **{"head.regression_head.bbox_ctrness.weight": torch.zeros(1, 256, 3, 3)})
    with pytest.raises(CheckpointError, match=r"not part of torchvision's fcos_resnet50_fpn"):  # FCOS's layout
        read_detector(_save(tmp_path / "fcos.pth", fcos))
    odd = dict(state, **{"head.classification_head.conv.1.weight": torch.zeros(256, 256, 3, 3)})  # conv.{odd}
    with pytest.raises(CheckpointError, match=r"not part of torchvision's retinanet_resnet50_fpn"):
        read_detector(_save(tmp_path / "odd.pth", odd))


def test_a_torchvision_model_fine_tuned_on_its_own_classes_keeps_their_count(tmp_path):
    state = torchvision_state()
    state["head.classification_head.cls_logits.weight"] = state["head.classification_head.cls_logits.weight"][: 9 * 4]
    state["head.classification_head.cls_logits.bias"] = state["head.classification_head.cls_logits.bias"][: 9 * 4]
    model, _ = load_detector(_save(tmp_path / "four.pth", state))
    assert model.config.class_names == ["class_1", "class_2", "class_3"] and model.config.num_classes == 4


def test_a_run_on_b_c_starts_from_the_a_b_checkpoint(tmp_path, monkeypatch, caplog):
    """Shared tensors equal the checkpoint's at step 0; b's rows move from slot 2 to slot 1 in each of the 9
    anchor groups; c's keep the fresh initialisation; the summary line says what was re-made."""
    sets = ab_and_bc(tmp_path / "sets")
    model = to_dict(micro_retinanet())

    def run_config(data, *overrides):
        return build_run_config({"model": model, "data": str(data)}, overrides=[*FAST, *overrides])

    trained_ab = train(run_config(sets["ab"], "train.iters=2"), tmp_path / "ab", progress=False)
    at_step_0: dict[str, torch.Tensor] = {}
    real_init = train_module.init_from_checkpoint

    def init_and_keep(model, source, class_names):
        report = real_init(model, source, class_names)
        at_step_0.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return report

    monkeypatch.setattr(train_module, "init_from_checkpoint", init_and_keep)
    with caplog.at_level(logging.INFO, logger="fpn.engine.train"):
        out = train(run_config(sets["bc"], "train.iters=1", f"train.weights={trained_ab}"), tmp_path / "bc")
    old = read_state_dict(trained_ab)["model"]
    assert read_state_dict(out)["config"]["class_names"] == ["b", "c"]
    shared = [k for k in old if k not in CLS]
    assert shared and all(torch.equal(at_step_0[k], old[k]) for k in shared)
    for key in CLS:
        new, was = at_step_0[key].reshape(9, 3, -1), old[key].reshape(9, 3, -1)  # [anchor, slot, ...]
        assert torch.equal(new[:, 0], was[:, 0]) and torch.equal(new[:, 1], was[:, 2]), key  # background, b
    prior = torch.tensor(-math.log(99.0))
    assert torch.allclose(at_step_0["head.cls_logits.bias"].view(9, 3)[:, 2], prior)  # c: the fresh prior
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--weights")]
    assert line == (
        f"--weights {trained_ab}: loaded {len(shared)} of {len(old)} tensors; re-made head.cls_logits for 1 new "
        "class (c), carried over 1 (b), dropped 1 of the checkpoint's; left out: none"
    )
