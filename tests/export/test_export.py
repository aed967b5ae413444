"""The exported graph against PyTorch: sizes (odd ones), batches, designs, zero and many detections."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx_models import assert_same, golden_images, spread_model

from fpn.errors import ConfigError
from fpn.export.onnx_export import ExportOptions, export_onnx
from fpn.export.runtime import OnnxDetector


@pytest.fixture(scope="module")
def dynamic(micro, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "micro.onnx"
    report = export_onnx(micro, path, ExportOptions(dynamic_size=True, batch=None, size=(237, 311)))
    assert [shape for shape, _ in report.probes] == [(1, 3, 237, 311), (3, 3, 177, 389)]
    return OnnxDetector(path)


def test_sizes_one_by_one(dynamic, micro):
    images = golden_images()
    images += [F.interpolate(images[0][None], size=size, mode="bilinear")[0].clamp(0, 1) for size in
               [(401, 603), (1001, 777), (97, 33), (32, 32)]]  # fmt: skip
    assert assert_same(dynamic, micro, images) > 0


def test_batch_of_three(dynamic, micro):
    """Three images of one size run as one [3, 3, H, W] batch: each image's detections are its own."""
    first = golden_images()[0]
    images = [first, first.flip(-1), first.flip(-2)]
    assert dynamic.batch is None
    outputs = dynamic.session.run(None, {"images": torch.stack(images).numpy()})
    assert set(outputs[4].tolist()) == {0, 1, 2} and list(outputs[4]) == sorted(outputs[4])
    assert assert_same(dynamic, micro, images) > 0


def test_metadata(dynamic, micro):
    assert dynamic.config.class_names == micro.config.class_names
    assert dynamic.config == micro.config
    proto = onnx.load(str(dynamic.path), load_external_data=False)
    assert {p.key for p in proto.metadata_props} >= {"fpn.format", "fpn.config", "fpn.class_names", "fpn.precision"}
    assert {o.name for o in proto.graph.output} == {"boxes", "scores", "labels", "levels", "batch_index"}
    ops = {node.op_type for node in proto.graph.node}
    assert {"Resize", "NonMaxSuppression", "RoiAlign", "TopK"} <= ops  # the whole model is in the graph


@pytest.mark.parametrize("design", ["fpn", "single-map", "hierarchy", "top-down-only", "finest-only"])
def test_every_design(design, tmp_path):
    model = spread_model(design=design)
    path = tmp_path / f"{design}.onnx"
    export_onnx(model, path, ExportOptions(dynamic_size=True, size=(181, 256)))
    assert assert_same(OnnxDetector(path), model, golden_images()[1:]) > 0


def test_image_pyramid_refused(tmp_path):
    with pytest.raises(ConfigError, match="image-pyramid") as error:
        export_onnx(spread_model(design="image-pyramid"), tmp_path / "m.onnx")
    assert "\n" not in str(error.value) and not (tmp_path / "m.onnx").exists()


def test_no_detections_and_many(tmp_path):
    """A flat image finds nothing (zero rows through NMS, RoIAlign and the ranking); a model keeping every
    candidate above 0.001 fills its 300 slots."""
    none = spread_model(score_thresh=0.9)
    export_onnx(none, tmp_path / "none.onnx", ExportOptions(dynamic_size=True, size=(181, 256)))
    flat = torch.full((3, 150, 210), 0.5)
    assert assert_same(OnnxDetector(tmp_path / "none.onnx"), none, [flat, *golden_images()]) == 0
    many = spread_model(score_thresh=0.001, detections_per_image=300)
    many.config.rpn.pre_nms_top_n_test, many.config.rpn.post_nms_top_n_test = 1000, 500  # the RPN's config too
    export_onnx(many, tmp_path / "many.onnx", ExportOptions(dynamic_size=True, size=(181, 256)))
    counts = [len(d["boxes"]) for d in OnnxDetector(tmp_path / "many.onnx")(golden_images())]
    assert min(counts) > 200
    assert assert_same(OnnxDetector(tmp_path / "many.onnx"), many, golden_images()) == sum(counts)


def test_static_file(micro, tmp_path):
    """Without dynamic axes: the export size and batch only; another size is refused in one line."""
    path = tmp_path / "static.onnx"
    export_onnx(micro, path, ExportOptions(size=(300, 199)))
    model = OnnxDetector(path)
    assert (model.size, model.batch) == ((300, 199), 1)
    images = golden_images()
    assert assert_same(model, micro, [images[1], images[1].flip(-1)]) > 0
    with pytest.raises(ValueError, match="199x300 px images only"):
        model([images[0]])


def test_fp16_refused(micro, tmp_path):
    with pytest.raises(ConfigError, match="fp16: not exported") as error:
        export_onnx(micro, tmp_path / "half.onnx", ExportOptions(precision="fp16"))
    assert "\n" not in str(error.value) and not (tmp_path / "half.onnx").exists()
