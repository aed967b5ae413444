"""torchvision's r50 layout exported with a dynamic size and compared with PyTorch on the golden photos (800 px)."""

from __future__ import annotations

import pytest
import realsize
import torch

from fpn.detection.checkpoint import load_detector
from fpn.export.check import SCORE_TOL, box_tolerance, compare
from fpn.export.onnx_export import ExportOptions, export_onnx
from fpn.export.runtime import OnnxDetector


@pytest.mark.real
def test_r50_torchvision_layout(tmp_path):
    weights = realsize.write_torchvision_r50(tmp_path / "fasterrcnn_resnet50_fpn_coco.pth")
    model, _ = load_detector(weights)
    report = export_onnx(model, tmp_path / "r50.onnx", ExportOptions(dynamic_size=True))
    assert all(difference.count > 0 for _, difference in report.probes)
    exported = OnnxDetector(tmp_path / "r50.onnx", threads=1)
    assert exported.config.class_names == model.config.class_names  # COCO's 91 slots, "N/A" included
    for name in realsize.PHOTO_SPECS:
        image = realsize.photo_tensor(name)
        with torch.no_grad():
            theirs = model([image])[0]
        ours = exported([image])[0]
        cap = model.config.roi_heads.detections_per_image
        difference = compare(ours, theirs, box_tolerance(model.transform, tuple(image.shape[-2:])), SCORE_TOL, cap)
        assert difference.problem is None, (name, difference)
        assert len(ours["boxes"]) > 0
