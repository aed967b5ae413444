"""The export tests need onnx and onnxruntime (the [onnx] extra, which make test installs)."""

from __future__ import annotations

import pytest
from onnx_models import spread_model

from fpn.detection import FasterRCNN

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def micro() -> FasterRCNN:
    return spread_model()
