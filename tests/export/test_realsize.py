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


@pytest.mark.real
def test_fcos_r50_torchvision_layout(tmp_path):
    """fcos-r50 read from torchvision's layout (the FCOS goldens' weights), exported with a dynamic size: on the
    golden photos at 800 px, PyTorch's detections within the tolerances, and torchvision's own (the goldens)."""
    from fcos_goldens import golden, write_torchvision_fcos
    from realsize import assert_same_detections

    model, _ = load_detector(write_torchvision_fcos(tmp_path / "fcos_resnet50_fpn_coco.pth"))
    report = export_onnx(model, tmp_path / "fcos.onnx", ExportOptions(dynamic_size=True))
    assert all(difference.count > 0 for _, difference in report.probes)
    exported = OnnxDetector(tmp_path / "fcos.onnx")
    expected = golden("fcos_realsize")["single"]
    for name in ["photo3_997x1058.png", "photo2_400x400.png"]:
        image = realsize.photo_tensor(name)
        with torch.no_grad():
            theirs = model([image])[0]
        ours = exported([image])[0]
        cap = model.output_config.detections_per_image
        tol = box_tolerance(model.transform, tuple(image.shape[-2:]))  # 0.01 px of the 800 px the networks see
        difference = compare(ours, theirs, tol, SCORE_TOL, cap)
        assert difference.problem is None, (name, difference)
        assert len(ours["boxes"]) > 0 and len(set(ours["levels"].tolist())) >= 2
        assert_same_detections(ours, expected[name], box_tol=tol)
