"""Detector checkpoints: round trip, a failed save keeps the old file, torchvision's layout, and refusing bad
files with one line."""

from __future__ import annotations

import os
import re

import pytest
import torch

from fpn.config import to_dict
from fpn.detection import FasterRCNN
from fpn.detection.checkpoint import load_detector, save_detector
from fpn.detection.torchvision_layouts import FASTER_RCNN
from fpn.errors import CheckpointError, OutputError
from fpn.presets import COCO_CLASSES, preset, r50_fpn


def tiny_model(design: str = "fpn", seed: int = 0) -> FasterRCNN:
    torch.manual_seed(seed)
    config = preset("tiny-fpn", design=design)
    config.class_names = ["cat", "dog"]
    config.category_ids = [17, 18]
    config.transform.min_size = [96]
    config.transform.max_size = 128
    config.rpn.pre_nms_top_n_test = 200
    config.rpn.post_nms_top_n_test = 100
    model = FasterRCNN(config)
    # GroupNorm affine weights away from their init, so that a load that forgot them would show
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def sample_images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 80, 110, generator=generator), torch.rand(3, 100, 70, generator=generator)]


def one_line(message: str) -> bool:
    return "\n" not in message.strip()


# ------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("design", ["fpn", "single-map"])
def test_save_and_load_give_identical_outputs(tmp_path, design):
    model = tiny_model(design)
    with torch.no_grad():
        before = model(sample_images())
    path = save_detector(model, tmp_path / "run" / "model.pt", epoch=3, note="hello")
    assert path == tmp_path / "run" / "model.pt" and path.is_file()
    loaded, state = load_detector(path)
    assert not loaded.training
    assert state["format"] == "fpn" and state["epoch"] == 3 and state["note"] == "hello"
    assert to_dict(loaded.config) == to_dict(model.config)
    assert loaded.config.class_names == ["cat", "dog"] and loaded.config.category_ids == [17, 18]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        after = loaded(sample_images())
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert sum(len(r["scores"]) for r in before) > 0  # the comparison was not between empty results


def test_load_applies_config_overrides(tmp_path):
    path = save_detector(tiny_model(), tmp_path / "model.pt")
    loaded, _ = load_detector(path, config_overrides=["roi_heads.score_thresh=0.3", "transform.min_size=[64]"])
    assert loaded.config.roi_heads.score_thresh == 0.3
    assert loaded.transform.min_size == [64]


def test_saved_checkpoint_loads_weights_only(tmp_path):
    path = save_detector(tiny_model(), tmp_path / "model.pt")
    data = torch.load(path, weights_only=True)
    assert data["format"] == "fpn" and isinstance(data["config"], dict) and "model" in data


# ------------------------------------------------------------------------------------------ failed saves


def test_save_detector_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_model()
    path = save_detector(model, tmp_path / "model.pt")
    original = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"\0" * 100)
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match="no space left on device"):  # the OSError as one line naming the file
        save_detector(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    load_detector(path)


# ------------------------------------------------------------------------------------------ torchvision layout


def torchvision_name(ours: str, *, old_layout: bool = False) -> str:
    """Our r50-fpn state-dict key as torchvision's ``fasterrcnn_resnet50_fpn`` names it.

    With ``old_layout=False`` (torchvision >= 0.13: ``inner_blocks.{i}.0.``, ``rpn.head.conv.0.0.``) this maps our
    295 keys exactly onto torchvision 0.28's 295 keys with the same shapes (checked once against
    ``FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), 91).state_dict()`` in the
    reference venv; the COCO checkpoint has these keys). ``old_layout=True`` gives the pre-0.13 names.
    """
    if ours.startswith("backbone."):
        return "backbone.body." + ours[len("backbone.") :]
    sub = "" if old_layout else "0."
    match = re.fullmatch(r"pyramid\.lateral\.c(\d)\.(\w+)", ours)
    if match:
        return f"backbone.fpn.inner_blocks.{int(match[1]) - 2}.{sub}{match[2]}"
    match = re.fullmatch(r"pyramid\.smooth\.p(\d)\.(\w+)", ours)
    if match:
        return f"backbone.fpn.layer_blocks.{int(match[1]) - 2}.{sub}{match[2]}"
    if ours.startswith("rpn.head.conv."):
        return f"rpn.head.conv.{sub}{sub}{ours.split('.')[-1]}"
    return ours


@pytest.fixture(scope="module")
def r50_shapes() -> dict[str, torch.Size]:
    return {key: value.shape for key, value in FasterRCNN(r50_fpn()).state_dict().items()}


def fake_torchvision_state(shapes, num_classes: int = 91, *, old_layout: bool = False) -> dict[str, torch.Tensor]:
    """A torchvision-layout state dict whose tensor number i is filled with the value i (so a mix-up would show)."""
    state = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.startswith("roi_heads.box_predictor.cls_score."):
            shape = (num_classes, *shape[1:])
        elif key.startswith("roi_heads.box_predictor.bbox_pred."):
            shape = (num_classes * 4, *shape[1:])
        state[torchvision_name(key, old_layout=old_layout)] = torch.full(shape, float(i))
    return state


def test_fake_state_has_torchvision_key_names(r50_shapes):
    state = fake_torchvision_state(r50_shapes)
    assert len(state) == 295
    for key in [
        "backbone.body.conv1.weight",
        "backbone.body.layer4.2.bn3.running_var",
        "backbone.fpn.inner_blocks.0.0.weight",
        "backbone.fpn.layer_blocks.3.0.bias",
        "rpn.head.conv.0.0.weight",
        "rpn.head.cls_logits.weight",
        "rpn.head.bbox_pred.bias",
        "roi_heads.box_head.fc6.weight",
        "roi_heads.box_predictor.cls_score.weight",
    ]:
        assert key in state, key
    assert state["backbone.fpn.inner_blocks.0.0.weight"].shape == (256, 256, 1, 1)
    assert state["backbone.fpn.inner_blocks.3.0.weight"].shape == (256, 2048, 1, 1)
    assert state["roi_heads.box_head.fc6.weight"].shape == (1024, 256 * 7 * 7)
    assert FASTER_RCNN.recognise(state)


def test_old_and_new_torchvision_layouts_convert_alike(r50_shapes):
    new = FASTER_RCNN.convert(fake_torchvision_state(r50_shapes), "new.pth")[1]
    old = FASTER_RCNN.convert(fake_torchvision_state(r50_shapes, old_layout=True), "old.pth")[1]
    assert list(new) == list(r50_shapes) == list(old)


def check_loaded_values(model: FasterRCNN, shapes) -> None:
    own = model.state_dict()
    for i, key in enumerate(shapes):
        value = own[key]
        assert value.numel() == 0 or (value.min().item() == i and value.max().item() == i), key


def lightning_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """What pytorch-lightning saves for a LightningModule holding the detector as ``self.model``."""
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{key}": value for key, value in state.items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}],
        "lr_schedulers": [],
    }


@pytest.mark.parametrize("wrapper", ["lightning", "model-prefix", "ddp-module-prefix", "model-entry", "safetensors"])
def test_wrapped_torchvision_state_dicts_load(tmp_path, r50_shapes, wrapper):
    state = fake_torchvision_state(r50_shapes)
    if wrapper == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / f"{wrapper}.ckpt"
        wrapped = {
            "lightning": lambda: lightning_checkpoint(state),
            "model-prefix": lambda: {f"model.{k}": v for k, v in state.items()},
            "ddp-module-prefix": lambda: {f"module.model.{k}": v for k, v in state.items()},
            "model-entry": lambda: {"model": state, "iteration": 7},
        }[wrapper]()
        torch.save(wrapped, path)
    model, _ = load_detector(path)
    assert model.config.class_names == COCO_CLASSES
    check_loaded_values(model, r50_shapes)


def test_wrapper_with_no_known_layout_names_the_file(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model.encoder.weight": torch.zeros(3)}, "epoch": 1}, path)
    message = error_for(path)
    assert "neither an fpn checkpoint nor a torchvision" in message and "fasterrcnn_resnet50_fpn" in message


def test_torchvision_coco_checkpoint_loads_as_r50_fpn(tmp_path, r50_shapes):
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(fake_torchvision_state(r50_shapes), path)
    model, state = load_detector(path)
    assert "backbone.body.conv1.weight" in state
    assert model.config.class_names == COCO_CLASSES
    assert model.config.num_classes == 91
    assert model.config.class_names[0] == "person" and model.config.class_names[-1] == "toothbrush"
    assert model.config.backbone.depth == 50 and model.config.backbone.norm == "frozen_bn"
    assert model.config.backbone.weights is None
    assert model.config.pyramid.design == "fpn"
    assert not model.training
    check_loaded_values(model, r50_shapes)  # every tensor went to the right place


def test_fine_tuned_torchvision_checkpoint_gets_numbered_classes(tmp_path, r50_shapes):
    path = tmp_path / "finetuned.pth"
    torch.save(fake_torchvision_state(r50_shapes, num_classes=5), path)
    model, _ = load_detector(path)
    assert model.config.class_names == ["class_1", "class_2", "class_3", "class_4"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 20
    check_loaded_values(model, r50_shapes)


def test_torchvision_state_with_foreign_keys_is_refused(tmp_path, r50_shapes):
    state = fake_torchvision_state(r50_shapes)
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.zeros(91, 256, 1, 1)
    path = tmp_path / "maskrcnn.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_detector(path)
    message = str(info.value)
    assert str(path) in message and "mask_predictor" in message and one_line(message)


def test_torchvision_state_with_wrong_shapes_is_refused(tmp_path, r50_shapes):
    state = fake_torchvision_state(r50_shapes)
    state["backbone.fpn.layer_blocks.1.0.weight"] = torch.zeros(256, 256, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_detector(path)
    message = str(info.value)
    assert str(path) in message and "pyramid.smooth.p3.weight" in message and one_line(message)


def test_torchvision_v2_style_keys_are_refused(tmp_path, r50_shapes):
    # fasterrcnn_resnet50_fpn_v2 has normalisation layers inside the FPN blocks (inner_blocks.{i}.1.*): not supported
    state = fake_torchvision_state(r50_shapes)
    state["backbone.fpn.inner_blocks.0.1.running_mean"] = torch.zeros(256)
    path = tmp_path / "v2.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_detector(path)
    assert str(path) in str(info.value) and one_line(str(info.value))
    assert "fasterrcnn_resnet50_fpn_v2 is not supported" in str(info.value)


# ------------------------------------------------------------------------------------------ bad files


class NotWeights:
    """An arbitrary object: a weights-only load must refuse to unpickle it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


class Exploit:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def error_for(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_detector(path)
    message = str(info.value)
    assert str(path) in message, message
    assert one_line(message), message
    return message


def test_wrong_shapes_in_an_fpn_checkpoint(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(7, 256)
    path = tmp_path / "wrong_shape.pt"
    torch.save({"format": "fpn", "config": to_dict(model.config), "model": state}, path)
    message = error_for(path)
    assert "roi_heads.box_predictor.cls_score.weight" in message
    assert "(7, 256)" in message and "(3, 256)" in message


def test_missing_keys_in_an_fpn_checkpoint(tmp_path):
    model = tiny_model()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("rpn.")}
    path = tmp_path / "missing.pt"
    torch.save({"format": "fpn", "config": to_dict(model.config), "model": state}, path)
    message = error_for(path)
    assert "missing keys" in message and "rpn.head" in message


def test_fpn_checkpoint_without_model_entry(tmp_path):
    path = tmp_path / "no_model.pt"
    torch.save({"format": "fpn", "config": to_dict(tiny_model().config)}, path)
    assert "'model'" in error_for(path)


def test_unknown_layout(tmp_path):
    path = tmp_path / "unknown.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)
    message = error_for(path)
    assert "neither an fpn checkpoint nor a torchvision" in message


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2), torch.ones(2)], path)
    message = error_for(path)
    assert "dict" in message and "list" in message


def test_pickled_object_is_refused_not_executed(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"model": NotWeights()}, path)
    message = error_for(path)
    assert "weights-only" in message


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "exploit.pt"
    torch.save({"model": Exploit(str(marker))}, path)
    assert not marker.exists()
    message = error_for(path)
    assert "weights-only" in message
    assert not marker.exists(), "unpickling ran code from the checkpoint"


def test_not_a_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    assert "not a readable" in error_for(path)


def test_truncated_checkpoint(tmp_path):
    path = save_detector(tiny_model(), tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "not a readable" in error_for(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    assert "no such checkpoint file" in error_for(path)
