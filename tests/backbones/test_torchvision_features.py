"""Our ResNets and FPN compute what torchvision's do, on weights rebuilt from key names (see tools/reference)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from fpn.backbones import ResNet
from fpn.levels import level
from fpn.pyramids import FPN

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tools" / "reference"))
from deterministic_weights import deterministic_state_dict  # noqa: E402

KEYS = json.loads((GOLDEN / "resnet_keys.json").read_text())


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_features_and_logits_equal_torchvision(depth):
    golden = torch.load(GOLDEN / f"resnet{depth}_features.pt", weights_only=True)
    model = ResNet(depth, norm="bn", num_classes=1000).eval()
    model.load_state_dict(deterministic_state_dict(dict(KEYS[f"resnet{depth}"])))
    with torch.no_grad():
        out = model(golden["input"])
        logits = model.classify(golden["input"])
    for k in range(2, 6):
        torch.testing.assert_close(out[f"c{k}"], golden["features"][f"C{k}"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, golden["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["even", "odd"])
def test_fpn_equals_torchvision_feature_pyramid_network(case):
    golden = torch.load(GOLDEN / "fpn_features.pt", weights_only=True)
    if case == "odd":
        inputs = golden["odd"]["inputs"]
    else:
        inputs = torch.load(GOLDEN / "resnet50_features.pt", weights_only=True)["features"]
    keys = golden["metadata"]["keys"]
    shapes = {k: tuple(s) for k, s in keys} if isinstance(keys, list) else {k: tuple(s) for k, s in keys.items()}
    tv = deterministic_state_dict(shapes)
    state = {}
    for key, value in tv.items():  # inner_blocks.{i}.0.weight -> lateral.c{i+2}.weight, layer_blocks -> smooth
        block, index, _, leaf = key.split(".")
        name = f"lateral.c{int(index) + 2}" if block == "inner_blocks" else f"smooth.p{int(index) + 2}"
        state[f"{name}.{leaf}"] = value
    model = FPN([level(f"c{k}", c) for k, c in zip(range(2, 6), (256, 512, 1024, 2048))], 256, extra="pool")
    model.load_state_dict(state)
    with torch.no_grad():
        out = model({f"c{k}": inputs[f"C{k}"] for k in range(2, 6)})
    expected = golden[case]["outputs"]
    for ours, theirs in zip(["p2", "p3", "p4", "p5", "p6"], ["0", "1", "2", "3", "pool"]):
        torch.testing.assert_close(out[ours], expected[theirs], rtol=1e-4, atol=1e-4, msg=ours)
