"""``import fpn``: the public API of the README and of fpn/__init__.py's docstring works as written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fpn


def test_every_public_name_resolves():
    for name in fpn.__all__:
        assert getattr(fpn, name) is not None, name
    assert fpn.__version__ and dir(fpn) == sorted(fpn.__all__)
    with pytest.raises(AttributeError):
        fpn.no_such_name  # noqa: B018


def test_import_fpn_levels_loads_no_detector():
    code = "import sys, fpn.levels; print(any(m.startswith('fpn.detection') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_docstring_example(tmp_path):
    torch.manual_seed(0)
    weights = fpn.save_detector(fpn.FasterRCNN(fpn.preset("micro-fpn")), tmp_path / "model.pt")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    model, _ = fpn.load_detector(weights)
    results = list(fpn.detect(model, [tmp_path / "a.png"], score_thresh=0.0, device="cpu"))
    assert len(results) == 1 and results[0].error is None
    for d in results[0].records:
        assert set(d) >= {"category", "score", "bbox", "level"}
    assert "p2" in fpn.FasterRCNN(fpn.preset("micro-fpn", design="hierarchy")).describe()


def test_detect_checks_its_arguments_at_the_call(tmp_path):
    model = fpn.FasterRCNN(fpn.preset("micro-fpn"))
    with pytest.raises(fpn.FpnError, match="precision"):
        fpn.detect(model, [tmp_path], precision="fp8")
    with pytest.raises(fpn.FpnError, match="nowhere"):
        fpn.detect(model, [tmp_path / "nowhere"])
