"""Generate the ResNet / FPN key lists and feature goldens in ``tests/golden/`` with torchvision.

Run with the reference venv (see ``tools/reference/README.md``)::

    /tmp/refvenv/bin/python tools/reference/make_backbone_goldens.py

Writes:

* ``resnet_keys.json`` -- ordered ``[key, shape]`` lists of torchvision's resnet18/34/50/101 state dicts;
* ``fasterrcnn_resnet50_fpn_keys.json`` -- the same for ``fasterrcnn_resnet50_fpn`` (``BatchNorm2d`` and
  ``FrozenBatchNorm2d`` backbones);
* ``resnet18_features.pt`` / ``resnet50_features.pt`` -- C2..C5 (outputs of layer1..layer4) and logits of the
  classification ResNets in eval mode with ``deterministic_state_dict`` weights;
* ``fpn_features.pt`` -- ``torchvision.ops.FeaturePyramidNetwork`` outputs on ResNet-50 features, even and odd sizes.

Every ``.pt`` file holds only tensors and plain Python values (``torch.load(..., weights_only=True)`` works).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deterministic_weights import SPECIAL_WEIGHT_STD, WEIGHT_GAIN, deterministic_state_dict, state_dict_shapes

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "tests" / "golden"

RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}
FPN_IN_CHANNELS = [256, 512, 1024, 2048]
FPN_OUT_CHANNELS = 256


def versions() -> dict[str, Any]:
    """Versions and weight-scheme settings recorded in every golden file."""
    return {
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "weight_gain": WEIGHT_GAIN,
        "special_weight_std": dict(SPECIAL_WEIGHT_STD),
    }


def key_list(module: nn.Module) -> list[list[Any]]:
    """``[[key, shape], ...]`` of a module's state dict, in order."""
    return [[key, list(value.shape)] for key, value in module.state_dict().items()]


def deterministic_input(shape: tuple[int, ...], seed: int) -> Tensor:
    """``torch.randn(shape)`` from a CPU generator seeded with ``seed`` (stored in the goldens, never regenerated)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def summary(t: Tensor) -> dict[str, Any]:
    """Shape and float64 sum / abs-sum / sum of squares of a tensor."""
    d = t.detach().to(torch.float64)
    return {
        "shape": list(t.shape),
        "sum": float(d.sum()),
        "abs_sum": float(d.abs().sum()),
        "sq_sum": float((d * d).sum()),
    }


def loaded(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with ``deterministic_state_dict`` of its own state-dict shapes."""
    module.load_state_dict(deterministic_state_dict(state_dict_shapes(module)))
    return module.eval()


@torch.no_grad()
def resnet_features(model: nn.Module, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """C2..C5 (outputs of layer1..layer4) and the classification logits of a torchvision ResNet."""
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = {}
    for level, name in zip(("C2", "C3", "C4", "C5"), ("layer1", "layer2", "layer3", "layer4")):
        h = getattr(model, name)(h)
        feats[level] = h.clone()
    logits = model.fc(torch.flatten(model.avgpool(h), 1))
    if not torch.equal(logits, model(x)):
        raise AssertionError("staged ResNet differs from model(x)")
    return feats, logits


def write_key_lists(out_dir: Path) -> None:
    """``resnet_keys.json`` and ``fasterrcnn_resnet50_fpn_keys.json``."""
    resnet_keys: dict[str, Any] = {
        "_meta": {
            **versions(),
            "builder": "torchvision.models.<name>(weights=None) (nn.BatchNorm2d)",
            "format": "model name -> ordered [[state_dict key, shape], ...]; num_batches_tracked is an int64 scalar "
            "(shape []), every other entry float32",
        }
    }
    for name, fn in RESNETS.items():
        resnet_keys[name] = key_list(fn(weights=None))
    (out_dir / "resnet_keys.json").write_text(json.dumps(resnet_keys, indent=1) + "\n")

    kwargs = {"num_classes": 91}
    plain = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    frozen = FasterRCNN(_resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3), **kwargs)
    plain_keys, frozen_keys = key_list(plain), key_list(frozen)
    expected = [k for k in plain_keys if not k[0].endswith("num_batches_tracked")]
    if frozen_keys != expected:
        raise AssertionError("FrozenBatchNorm2d key list is not the BatchNorm2d one minus num_batches_tracked")
    detector_keys = {
        "_meta": {
            **versions(),
            "fasterrcnn_resnet50_fpn": "fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91): "
            "backbone norm is nn.BatchNorm2d, so backbone.body.*bn*/downsample.1 have num_batches_tracked",
            "fasterrcnn_resnet50_fpn_frozen_bn": "the layout torchvision builds whenever weights or weights_backbone "
            "are given (resnet50(norm_layer=FrozenBatchNorm2d)): FrozenBatchNorm2d buffers are weight, bias, "
            "running_mean, running_var (no num_batches_tracked) -- the key set of the COCO checkpoints",
            "format": "ordered [[state_dict key, shape], ...]",
        },
        "fasterrcnn_resnet50_fpn": plain_keys,
        "fasterrcnn_resnet50_fpn_frozen_bn": frozen_keys,
    }
    (out_dir / "fasterrcnn_resnet50_fpn_keys.json").write_text(json.dumps(detector_keys, indent=1) + "\n")


def write_resnet_features(out_dir: Path, name: str, shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    """``<name>_features.pt``; returns its content."""
    model = loaded(RESNETS[name](weights=None))
    x = deterministic_input(shape, seed)
    feats, logits = resnet_features(model, x)
    content = {
        "metadata": {
            **versions(),
            "model": f"torchvision.models.{name}(weights=None).eval() (nn.BatchNorm2d, eps 1e-5)",
            "weights": "deterministic_state_dict(state_dict_shapes(model)); keys unprefixed, e.g. 'conv1.weight', "
            "'layer1.0.bn1.running_var', 'fc.weight'",
            "input": f"torch.randn({list(shape)}, generator=torch.Generator().manual_seed({seed})) (stored)",
            "features": "C2..C5 = outputs of layer1..layer4",
        },
        "input": x,
        "features": feats,
        "logits": logits,
        "summaries": {level: summary(t) for level, t in feats.items()},
    }
    save(content, out_dir / f"{name}_features.pt")
    return content


@torch.no_grad()
def write_fpn_features(out_dir: Path, even_feats: dict[str, Tensor]) -> None:
    """``fpn_features.pt``: FPN outputs for the even (resnet50_features.pt) and an odd-sized input."""
    fpn = loaded(FeaturePyramidNetwork(FPN_IN_CHANNELS, FPN_OUT_CHANNELS, extra_blocks=LastLevelMaxPool()))
    backbone = loaded(resnet50(weights=None))
    odd_input = deterministic_input((1, 3, 37, 53), seed=2)
    odd_feats, _ = resnet_features(backbone, odd_input)

    def run(feats: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = {str(i): feats[level] for i, level in enumerate(("C2", "C3", "C4", "C5"))}
        return {name: out.clone() for name, out in fpn(inputs).items()}

    even_out, odd_out = run(even_feats), run(odd_feats)
    content = {
        "metadata": {
            **versions(),
            "module": "torchvision.ops.FeaturePyramidNetwork([256, 512, 1024, 2048], 256, "
            "extra_blocks=LastLevelMaxPool()).eval()",
            "weights": "deterministic_state_dict(state_dict_shapes(fpn)); keys unprefixed (see 'keys')",
            "keys": key_list(fpn),
            "inputs": "OrderedDict {'0': C2, '1': C3, '2': C4, '3': C5} of resnet50 (weights as in "
            "resnet50_features.pt) features; outputs {'0': P2, '1': P3, '2': P4, '3': P5, 'pool': P6}",
            "even": "input image = resnet50_features.pt['input'] [1,3,64,80]; its C2..C5 are "
            "resnet50_features.pt['features'] (not duplicated here)",
            "odd": "input image [1,3,37,53] = torch.randn(generator=manual_seed(2)) (stored), C2..C5 stored",
        },
        "even": {
            "outputs": even_out,
            "summaries": {k: summary(v) for k, v in even_out.items()},
        },
        "odd": {
            "image": odd_input,
            "inputs": odd_feats,
            "outputs": odd_out,
            "summaries": {k: summary(v) for k, v in odd_out.items()},
        },
    }
    save(content, out_dir / "fpn_features.pt")


def save(content: dict[str, Any], path: Path) -> None:
    """Save a golden file, check it loads with ``weights_only=True`` and report its size and tensor scales."""
    torch.save(content, path)
    torch.load(path, weights_only=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Tensor):
            print(f"  {prefix}: {list(value.shape)} rms {float(value.pow(2).mean().sqrt()):.3g}")
        elif isinstance(value, dict) and prefix != "metadata" and not prefix.endswith("summaries"):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)

    walk("", content)


def main() -> None:
    """Write all backbone goldens."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    write_key_lists(args.out_dir)
    write_resnet_features(args.out_dir, "resnet18", (1, 3, 67, 93), seed=0)
    r50 = write_resnet_features(args.out_dir, "resnet50", (1, 3, 64, 80), seed=1)
    write_fpn_features(args.out_dir, r50["features"])


if __name__ == "__main__":
    main()
