"""The one-stage detectors' exported graphs (FCOS, RetinaNet) against PyTorch: sizes (odd ones), batches of 1
and 3 through one dynamic file, a flat image with no detection, a full cap of detections, the levels."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx_models import assert_same, dense_model, golden_images

from fpn.export.onnx_export import ExportOptions, export_onnx
from fpn.export.runtime import OnnxDetector

PRESETS = ["tiny-fcos", "tiny-retinanet"]


@pytest.fixture(scope="module", params=PRESETS)
def exported(request, tmp_path_factory):
    """``(model, OnnxDetector)``: one file with a dynamic size and batch per preset."""
    model = dense_model(request.param)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    report = export_onnx(model, path, ExportOptions(dynamic_size=True, batch=None, size=(237, 311)))
    assert [shape for shape, _ in report.probes] == [(1, 3, 237, 311), (3, 3, 177, 389)]
    assert all(difference.count > 0 for _, difference in report.probes)
    return model, OnnxDetector(path)


def test_sizes_one_by_one(exported):
    model, onnx_model = exported
    images = golden_images()
    images += [F.interpolate(images[0][None], size=size, mode="bilinear")[0].clamp(0, 1) for size in
               [(401, 603), (1001, 777), (97, 33), (32, 32)]]  # fmt: skip
    assert assert_same(onnx_model, model, images) > 0


def test_batch_of_three(exported):
    """Three images of one size run as one [3, 3, H, W] batch: each image's detections are its own."""
    model, onnx_model = exported
    first = golden_images()[0]
    images = [first, first.flip(-1), first.flip(-2)]
    outputs = onnx_model.session.run(None, {"images": torch.stack(images).numpy()})
    assert set(outputs[4].tolist()) == {0, 1, 2} and list(outputs[4]) == sorted(outputs[4])
    assert assert_same(onnx_model, model, images) > 0


def test_graph_holds_the_whole_model(exported):
    model, onnx_model = exported
    assert onnx_model.config == model.config
    proto = onnx.load(str(onnx_model.path), load_external_data=False)
    ops = {node.op_type for node in proto.graph.node}
    assert {"Resize", "Sigmoid", "TopK", "NonMaxSuppression", "Range"} <= ops and "RoiAlign" not in ops


def test_levels_are_the_detectors(exported):
    """Detections come from several levels and each keeps its own (compared as a multiset in assert_same)."""
    model, onnx_model = exported
    levels = torch.cat([d["levels"] for d in onnx_model(golden_images())])
    assert len(levels.unique()) >= 2 and set(levels.tolist()) <= {lv.index for lv in model.levels}


@pytest.mark.parametrize("name", PRESETS)
def test_no_detections_and_many(name, tmp_path):
    """A flat image finds nothing (zero rows through TopK, NMS and the ranking) at the preset's threshold; a
    model keeping every candidate above 0.01 fills its 300 slots on every image."""
    flat = torch.full((3, 150, 210), 0.5)
    none = dense_model(name, score_thresh=0.9)
    export_onnx(none, tmp_path / "none.onnx", ExportOptions(dynamic_size=True, size=(181, 256)))
    assert assert_same(OnnxDetector(tmp_path / "none.onnx"), none, [flat, *golden_images()]) == 0
    many = dense_model(name, score_thresh=0.01, detections_per_image=300)
    export_onnx(many, tmp_path / "many.onnx", ExportOptions(dynamic_size=True, size=(181, 256)))
    counts = [len(d["boxes"]) for d in OnnxDetector(tmp_path / "many.onnx")(golden_images())]
    assert counts == [300] * 3
    assert assert_same(OnnxDetector(tmp_path / "many.onnx"), many, golden_images()) == sum(counts)


def test_export_then_detect_cli(tmp_path, capsys):
    """fpn export, then fpn detect --weights model.onnx on 400-1000 px images: PyTorch's JSON records."""
    from PIL import Image

    from fpn.cli import main
    from fpn.detection.checkpoint import save_detector
    from fpn.export.check import box_tolerance

    model = dense_model("tiny-fcos")
    save_detector(model, tmp_path / "model.pt")
    paths = []
    for i, (image, size) in enumerate(zip(golden_images() * 2, [(400, 533), (1000, 750), (613, 817), (480, 640)])):
        pixels = F.interpolate(image[None], size=size, mode="bilinear")[0].clamp(0, 1)
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray((pixels * 255).round().byte().permute(1, 2, 0).numpy()).save(paths[-1])
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(tmp_path / "model.pt"), "--output", str(onnx_file), "--dynamic-size"]) == 0
    assert "checked against PyTorch in onnxruntime" in capsys.readouterr().out
    records = {}
    for weights in ("model.pt", "model.onnx"):
        out = tmp_path / f"{weights}.json"
        assert (
            main(
                ["detect", *paths, "--weights", str(tmp_path / weights), "--output", str(out), "--score-thresh", "0.25"]
            )
            == 0
        )
        records[weights] = json.loads(out.read_text())["detections"]
    ours, theirs = records["model.onnx"], records["model.pt"]
    assert len(ours) == len(theirs) > 20
    for name in {r["file_name"] for r in theirs}:
        mine = [r for r in ours if r["file_name"] == name]
        reference = [r for r in theirs if r["file_name"] == name]
        assert len(mine) == len(reference)
        size = Image.open(tmp_path / name).size[::-1]
        # Records are rounded to 0.01 px and 1e-5 of score.
        tol = box_tolerance(model.transform, size) + 0.01
        nearest = torch.cdist(torch.tensor([r["bbox"] for r in mine]), torch.tensor([r["bbox"] for r in reference]),
                              p=float("inf")).min(dim=1)  # fmt: skip
        assert nearest.values.max() <= tol
        for record, index in zip(mine, nearest.indices.tolist()):
            match = reference[index]
            assert (record["category"], record["level"]) == (match["category"], match["level"])
            assert abs(record["score"] - match["score"]) <= 1.2e-4
