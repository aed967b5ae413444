"""Faster R-CNN with every pyramid design: losses, detections, levels, the level contract, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fpn.config import DESIGNS
from fpn.detection import FasterRCNN
from fpn.detection.image_pyramid import merge_scales
from fpn.errors import ModelBuildError
from fpn.presets import preset

CLASSES = ["square", "disc", "triangle"]
LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
# The pyramid levels a design predicts from, and the levels its RoIs are pooled from (P6 only feeds the RPN).
PREDICTION_LEVELS = {
    "fpn": ["p2", "p3", "p4", "p5", "p6"],
    "hierarchy": ["p2", "p3", "p4", "p5", "p6"],
    "top-down-only": ["p2", "p3", "p4", "p5", "p6"],
    "single-map": ["p5"],
    "image-pyramid": ["p5"],
    "finest-only": ["p2"],
}
ROI_LEVELS = {
    "fpn": {2, 3, 4, 5},
    "hierarchy": {2, 3, 4, 5},
    "top-down-only": {2, 3, 4, 5},
    "single-map": {5},
    "image-pyramid": {5},
    "finest-only": {2},
}
SIZES = [(90, 130), (120, 100)]  # odd, different sizes: resized and padded differently


def tiny_config(design: str = "fpn"):
    config = preset("tiny-fpn", design=design)
    config.class_names = list(CLASSES)
    config.transform.min_size = [128]
    config.transform.max_size = 192
    config.pyramid.test_scales = [96, 128]
    # fewer proposals and RoIs: the same code paths, faster
    config.rpn.pre_nms_top_n_train = config.rpn.pre_nms_top_n_test = 200
    config.rpn.post_nms_top_n_train = config.rpn.post_nms_top_n_test = 100
    config.roi_heads.batch_size_per_image = 64
    return config


def build(design: str = "fpn", seed: int = 0) -> FasterRCNN:
    torch.manual_seed(seed)
    return FasterRCNN(tiny_config(design))


def perturb_group_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every GroupNorm non-trivial affine weights (the last one of each residual block starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.2 - 0.1)


def images(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) for h, w in SIZES]


def targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 125.0, 85.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 30.0, 95.0, 110.0]]), "labels": torch.tensor([3])},
    ]


def empty_targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)} for _ in SIZES]


@pytest.fixture(scope="module", params=DESIGNS)
def design_model(request) -> tuple[str, FasterRCNN]:
    model = build(request.param)
    perturb_group_norms(model)
    return request.param, model


def test_every_design_is_covered():
    assert set(PREDICTION_LEVELS) == set(DESIGNS)


def test_levels_of_each_design(design_model):
    design, model = design_model
    assert [lv.name for lv in model.levels] == PREDICTION_LEVELS[design]
    sizes = model.rpn.anchor_generator.describe()
    assert list(sizes) == PREDICTION_LEVELS[design]
    assert sorted(s for group in sizes.values() for s in group) == [16, 32, 64, 128, 256]
    assert len(model.describe().splitlines()) == len(model.levels)


def test_training_step_gives_finite_losses_and_gradients_everywhere(design_model):
    design, model = design_model
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    losses = model(images(), targets())
    assert set(losses) == LOSSES
    for name, value in losses.items():
        assert value.dim() == 0, name
        assert math.isfinite(value.item()), name
        assert value.item() >= 0, name
    sum(losses.values()).backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [name for name, p in trainable if p.grad is None]
    assert not no_grad, f"{design}: parameters without gradient: {no_grad}"
    zero = [name for name, p in trainable if not torch.any(p.grad != 0)]
    assert not zero, f"{design}: parameters with an all-zero gradient: {zero}"
    nonfinite = [name for name, p in trainable if not torch.isfinite(p.grad).all()]
    assert not nonfinite, f"{design}: non-finite gradients: {nonfinite}"
    # per-level counts for `fpn show`
    assert len(model.last_counts["anchors"]) == len(model.levels)
    assert len(model.last_counts["proposals"]) == len(model.levels)
    model.zero_grad(set_to_none=True)


def test_eval_detections_are_well_formed(design_model):
    design, model = design_model
    model.eval()
    with torch.no_grad():
        results = model(images())
    assert len(results) == len(SIZES)
    for result, (h, w) in zip(results, SIZES):
        assert set(result) == {"boxes", "scores", "labels", "levels"}
        boxes, scores, labels, levels = result["boxes"], result["scores"], result["labels"], result["levels"]
        n = len(scores)
        assert n > 0, f"{design}: no detections from a random model (class scores are ~1/K > 0.05)"
        assert n <= model.config.roi_heads.detections_per_image
        assert boxes.shape == (n, 4) and labels.shape == (n,) and levels.shape == (n,)
        assert torch.isfinite(boxes).all()
        # inside the original image
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        # best first
        assert torch.all(scores[:-1] >= scores[1:])
        assert ((scores > model.config.roi_heads.score_thresh) & (scores <= 1)).all()
        assert labels.dtype == torch.int64
        assert ((labels >= 1) & (labels <= len(CLASSES))).all()
        assert set(levels.tolist()) <= ROI_LEVELS[design]


def test_images_without_objects_train(design_model):
    _, model = design_model
    model.train()
    torch.manual_seed(2)
    losses = model(images(), empty_targets())
    assert set(losses) == LOSSES
    assert all(math.isfinite(v.item()) for v in losses.values())
    # nothing to regress to
    assert losses["loss_rpn_box_reg"].item() == 0
    assert losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)


def test_batch_mixing_images_with_and_without_objects():
    model = build("fpn")
    model.train()
    mixed = [targets()[0], empty_targets()[1]]
    losses = model(images(), mixed)
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_box_reg"].item() > 0


def test_training_needs_targets():
    model = build("single-map").train()
    with pytest.raises(ValueError, match="targets"):
        model(images())


def test_single_map_from_c4_predicts_from_p4():
    config = tiny_config("single-map")
    config.pyramid.source = "c4"
    model = FasterRCNN(config).eval()
    assert [lv.name for lv in model.levels] == ["p4"]
    with torch.no_grad():
        results = model(images())
    assert all(set(r["levels"].tolist()) <= {4} for r in results)
    assert sum(len(r["scores"]) for r in results) > 0


# ------------------------------------------------------------------------------------------ level contract


@pytest.mark.parametrize(
    ("design", "sizes", "extra"),
    [
        ("fpn", [16, 32, 64], "pool"),  # 3 sizes, 5 levels
        ("fpn", [16, 32, 64, 128, 256, 512], "pool"),  # 6 sizes, 5 levels
        ("hierarchy", [16, 32, 64, 128], "pool"),
        ("fpn", [16, 32, 64, 128, 256], "p6p7-p5"),  # 5 sizes, 6 levels (p2..p7)
        ("top-down-only", [16, 32, 64, 128, 256], "none"),  # 5 sizes, 4 levels (p2..p5)
    ],
)
def test_anchors_that_cannot_be_split_over_the_levels_fail_at_build(design, sizes, extra):
    config = tiny_config(design)
    config.anchors.sizes = sizes
    config.pyramid.extra = extra
    with pytest.raises(ModelBuildError) as info:
        FasterRCNN(config)
    message = str(info.value)
    assert f"{len(sizes)} anchor sizes" in message
    assert "levels" in message and "p2" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("design", "sizes", "per_level"),
    [
        ("single-map", [16, 32, 64], 3),  # any number of sizes on one map
        ("finest-only", [16, 32, 64, 128], 4),
        ("fpn", [16, 24, 32, 48, 64, 96, 128, 192, 256, 384], 2),  # two per level
    ],
)
def test_anchor_sizes_that_split_evenly_build(design, sizes, per_level):
    config = tiny_config(design)
    config.anchors.sizes = sizes
    model = FasterRCNN(config)
    assert all(len(group) == per_level for group in model.rpn.anchor_generator.describe().values())
    assert model.rpn.head.cls_logits.out_channels == per_level * 3


# ------------------------------------------------------------------------------------------ image pyramid


def test_image_pyramid_runs_the_model_at_each_test_scale_and_merges():
    model = build("image-pyramid")
    model.config.pyramid.test_scales = [64, 96, 128]
    model.eval()
    inputs = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: inputs.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            merged = model(images())
            calls = list(inputs)
            per_scale = [model(images(), shorter=scale) for scale in (64, 96, 128)]
    finally:
        hook.remove()
    # one full backbone pass per scale, on the image resized to that scale (a batch of both images, padded to 32)
    assert len(calls) == 3
    for shape, scale in zip(calls, (64, 96, 128)):
        batch, _ = model.transform(images(), shorter=scale)
        assert shape == tuple(batch.tensors.shape), scale
        assert min(min(size) for size in batch.image_sizes) == scale
    assert calls[0][2] < calls[1][2] < calls[2][2]
    # the result is the per-class NMS merge of the per-scale detections, in original pixels
    expected = merge_scales(per_scale, model.config.roi_heads.nms_thresh, model.config.roi_heads.detections_per_image)
    for got, want, (h, w) in zip(merged, expected, SIZES):
        for key in ("boxes", "scores", "labels", "levels"):
            assert torch.allclose(got[key].float(), want[key].float()), key
        assert len(got["scores"]) <= model.config.roi_heads.detections_per_image
        assert (got["boxes"][:, 2] <= w + 1e-3).all() and (got["boxes"][:, 3] <= h + 1e-3).all()
        assert torch.all(got["scores"][:-1] >= got["scores"][1:])
    # the merge draws on more than one scale
    origins = set()
    for i, got in enumerate(merged):
        for box in got["boxes"]:
            for scale_index, dets in enumerate(per_scale):
                if (dets[i]["boxes"] == box).all(dim=1).any():
                    origins.add(scale_index)
    assert len(origins) > 1


def test_single_map_runs_once_in_eval():
    model = build("single-map").eval()
    calls = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with torch.no_grad():
            model(images())
    finally:
        hook.remove()
    assert len(calls) == 1


def two_class_micro():
    """micro-fpn with two classes that keeps every detection (score threshold 0): comparisons see them all."""
    config = preset("micro-fpn")
    config.class_names = ["a", "b"]
    config.roi_heads.score_thresh = 0.0
    return config


def test_bf16_autocast_keeps_boxes_and_scores_in_fp32():
    torch.manual_seed(0)
    config = two_class_micro()
    model = FasterRCNN(config).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model([torch.rand(3, 100, 140)])[0]
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    assert len(out["boxes"]) > 0


def test_optimized_for_inference_gives_the_same_detections(tmp_path):
    from fpn.detection.checkpoint import save_detector

    torch.manual_seed(0)
    config = preset("micro-fpn")
    config.class_names = ["a", "b"]
    config.backbone.norm = "frozen_bn"
    config.roi_heads.score_thresh = 0.0
    model = FasterRCNN(config).eval()
    for module in model.backbone.modules():  # non-trivial frozen statistics, so folding has work to do
        if hasattr(module, "running_var"):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.5, 0.5)
    image = torch.rand(3, 100, 140)
    with torch.inference_mode():
        expected = model([image])[0]
        got = model.optimize_for_inference()([image])[0]
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=0)
    assert torch.equal(got["labels"], expected["labels"])
    with pytest.raises(RuntimeError, match="optimized for inference"):
        model.train()
    with pytest.raises(ValueError, match="cannot be saved"):
        save_detector(model, tmp_path / "folded.pt")


def test_bfloat16_inference_keeps_boxes_and_scores_in_float32_and_close_to_float32():
    torch.manual_seed(0)
    config = two_class_micro()
    reference = FasterRCNN(config).eval()
    model = FasterRCNN(config)
    model.load_state_dict(reference.state_dict())
    model.optimize_for_inference(torch.bfloat16)
    assert model.backbone.conv1.weight.dtype == torch.bfloat16
    assert model.roi_heads.box_predictor.cls_score.weight.dtype == torch.bfloat16
    image = torch.rand(3, 100, 140)
    with torch.inference_mode():
        expected = reference([image])[0]
        got = model([image])[0]
    assert got["boxes"].dtype == torch.float32 and got["scores"].dtype == torch.float32
    assert len(got["boxes"]) > 0
    # bf16 is not exact: the best detection is still found, within a pixel and a little score.
    best = torch.cdist(expected["boxes"][:1], got["boxes"], p=float("inf")).min()
    assert best < 1.0
    assert abs(float(got["scores"][0] - expected["scores"][0])) < 0.02
    with pytest.raises(ValueError, match="float32 and bfloat16"):
        FasterRCNN(config).optimize_for_inference(torch.float16)


def test_winograd_training_gives_the_same_losses_and_gradients(monkeypatch):
    from fpn.layers import winograd as winograd_ops

    monkeypatch.setattr(winograd_ops.WinogradConv2d, "min_tiles_training", 1)  # a micro model's maps are small
    folded_calls = []  # Winograd convolutions that received a folded (non-leaf) weight from conv_norm
    apply = winograd_ops._WinogradConvFunction.apply
    monkeypatch.setattr(
        winograd_ops._WinogradConvFunction,
        "apply",
        lambda x, weight, *rest: folded_calls.append(not weight.is_leaf) or apply(x, weight, *rest),
    )
    # Every 3x3 stride-1 convolution of a frozen-BN micro model through Winograd, in training: the backbone's
    # get their frozen BatchNorm folded in on the fly (conv_norm), the pyramid's and the RPN head's run as is.
    config = two_class_micro()
    config.backbone.norm = "frozen_bn"
    torch.manual_seed(0)
    direct = FasterRCNN(config)
    winograd = FasterRCNN(config)
    winograd.load_state_dict(direct.state_dict())
    swapped = winograd.use_winograd(min_channels=1)
    assert swapped >= 10 and list(winograd.state_dict()) == list(direct.state_dict())
    assert type(winograd.backbone.layer1[0].conv1).__name__ == "WinogradConv2d"
    assert winograd.use_winograd(min_channels=1) == 0  # already swapped: nothing more to do
    results = []
    for model in (direct, winograd):
        model.train()
        torch.manual_seed(1)  # the same anchor and RoI sampling
        losses = model([torch.rand(3, 100, 140, generator=torch.Generator().manual_seed(2))], targets()[:1])
        sum(losses.values()).backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results.append(({k: v.item() for k, v in losses.items()}, grads))
    (losses0, grads0), (losses1, grads1) = results
    assert any(folded_calls) and not all(folded_calls)  # backbone (folded) and pyramid / RPN (as is) both ran
    assert losses1 == pytest.approx(losses0, rel=1e-4)
    assert set(grads1) == set(grads0)
    for name, grad in grads0.items():
        assert grads1[name] is not None, name
        torch.testing.assert_close(grads1[name], grad, atol=1e-4 * float(grad.abs().max()) + 1e-7, rtol=0)
