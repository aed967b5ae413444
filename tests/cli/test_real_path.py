"""The path users walk, at the sizes they run, through ``fpn.cli.main``.

Every command runs once as a user runs it: ``detect``, ``show``, ``eval`` and ``bench`` with torchvision's
``fasterrcnn_resnet50_fpn`` checkpoint layout at 800 px on photo-sized images (the goldens' deterministic
weights, so ``detect``'s JSON can be checked against torchvision's own detections), default flags and each
precision / mode flag; ``train`` with its default preset on images of 400-1000 px, then ``eval``, ``detect`` and
``anchors`` on the result. An earlier ``fpn detect`` crash with that checkpoint on ordinary photos reached main
because every detect test ran a small preset at ~100 px, where no optimized path engaged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from realsize import BOX_TOL, SCORE_TOL, assert_same_detections, golden, write_photos, write_torchvision_r50

from fpn.cli import main
from fpn.detection.classes import label_mask
from fpn.presets import r50_fpn

pytestmark = pytest.mark.real

PHOTOS = ["photo2_400x400.png", "photo3_997x1058.png"]
# detect's JSON rounds boxes to 0.01 px and scores to 1e-5: the parity tolerances plus that rounding.
JSON_BOX_TOL = BOX_TOL + 0.01
JSON_SCORE_TOL = SCORE_TOL + 1e-5


def fpn(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def r50(tmp_path_factory) -> Path:
    return write_torchvision_r50(tmp_path_factory.mktemp("r50") / "fasterrcnn_resnet50_fpn_coco.pth")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, PHOTOS)
    return folder


def read_detections(path: Path) -> dict[str, list[dict]]:
    """``file_name -> records`` from detect's JSON, every image listed (with or without detections)."""
    results = json.loads(path.read_text())
    by_image = {image["file_name"]: [] for image in results["images"]}
    for record in results["detections"]:
        by_image[record["file_name"]].append(record)
    return by_image


def as_tensors(records: list[dict]) -> dict[str, torch.Tensor]:
    boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    return {
        "boxes": boxes,
        "scores": torch.tensor([r["score"] for r in records], dtype=torch.float64),
        "labels": torch.tensor([r["category_id"] for r in records]),
    }


def without_placeholders(detections: dict) -> dict[str, torch.Tensor]:
    """torchvision's detections less those in COCO's unused "N/A" slots, which fpn never reports."""
    keep = label_mask(r50_fpn())[detections["labels"]]
    return {key: detections[key][keep] for key in ("boxes", "scores", "labels")}


def file_key(by_image: dict, name: str) -> str:
    (key,) = [k for k in by_image if Path(k).name == name]
    return key


@pytest.fixture(scope="module")
def detect_runs(r50, photos, tmp_path_factory) -> dict[str, Path]:
    """``fpn detect`` on the photos with default flags, ``--direct-conv`` and ``--precision bf16`` (every
    detection kept: ``--score-thresh 0``)."""
    out = tmp_path_factory.mktemp("detect")
    runs = {"default": [], "direct-conv": ["--direct-conv"], "bf16": ["--precision", "bf16"]}
    paths = {}
    for name, flags in runs.items():
        paths[name] = out / f"{name}.json"
        assert fpn("detect", photos, "--weights", r50, "--output", paths[name], "--score-thresh", 0, *flags) == 0
    return paths


@pytest.mark.parametrize("run", ["default", "direct-conv"])
def test_detect_with_torchvisions_r50_gives_torchvisions_detections(detect_runs, run):
    by_image = read_detections(detect_runs[run])
    expected = golden()["single"]
    for name in PHOTOS:
        # torchvision's labels index COCO's 91 slots: they are the category ids.
        theirs = without_placeholders(expected[name])
        assert_same_detections(as_tensors(by_image[file_key(by_image, name)]), theirs, JSON_BOX_TOL, JSON_SCORE_TOL)


def test_detect_default_path_equals_direct_convolutions(detect_runs):
    fast, plain = read_detections(detect_runs["default"]), read_detections(detect_runs["direct-conv"])
    assert fast.keys() == plain.keys()
    for key in fast:
        assert_same_detections(as_tensors(fast[key]), as_tensors(plain[key]), JSON_BOX_TOL, JSON_SCORE_TOL)


def test_detect_bf16_finds_the_confident_detections(detect_runs):
    """bfloat16 is close, not equal: its most confident detections are fp32's, boxes within a few px."""
    fp32, bf16 = read_detections(detect_runs["default"]), read_detections(detect_runs["bf16"])
    for key in fp32:
        ours = as_tensors(sorted(bf16[key], key=lambda r: -r["score"])[:20])
        theirs = as_tensors(fp32[key])
        distance = torch.cdist(ours["boxes"], theirs["boxes"], p=float("inf"))
        distance[ours["labels"][:, None] != theirs["labels"][None, :]] = float("inf")
        matched = distance.min(dim=1).values <= 4.0
        assert matched.float().mean() >= 0.8, f"{key}: {int(matched.sum())} of 20 bf16 detections found in fp32"


def test_detect_save_images_and_colour_by_level(r50, photos, tmp_path):
    out = tmp_path / "pictures"
    code = fpn("detect", photos, "--weights", r50, "--output", tmp_path / "d.json", "--save-images", out,
               "--colour-by", "level")  # fmt: skip
    assert code == 0
    pictures = sorted(out.iterdir())
    assert len(pictures) == len(PHOTOS)
    with Image.open(pictures[0]) as picture:
        assert picture.size[0] >= 400


def test_show_with_torchvisions_r50(r50, photos, tmp_path, capsys):
    out = tmp_path / "show"
    assert fpn("show", "--weights", r50, photos / PHOTOS[1], "--out", out) == 0
    written = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert ".png" in written or ".jpg" in written
    assert capsys.readouterr().err.count("Traceback") == 0


def write_coco(folder: Path, sizes: list[tuple[int, int]], categories: dict[int, str], seed: int) -> Path:
    """A COCO set of images ``(height, width)`` with 3-6 filled rectangles each, annotated; returns its YAML."""
    rng = np.random.default_rng(seed)
    category_ids = list(categories)
    images, annotations = [], []
    (folder / "images").mkdir(parents=True)
    for index, (height, width) in enumerate(sizes, start=1):
        array = (rng.random((height // 16 + 1, width // 16 + 1, 3)) * 80 + 60).astype(np.uint8)
        picture = np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR)).copy()
        for _ in range(int(rng.integers(3, 7))):
            w, h = int(rng.integers(24, width // 3)), int(rng.integers(24, height // 3))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            category = int(rng.integers(len(category_ids)))
            picture[y : y + h, x : x + w] = (230, 40, 40) if category == 0 else (40, 40, 230)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index, "category_id": category_ids[category],
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        name = f"img{index}_{height}x{width}.jpg"
        Image.fromarray(picture).save(folder / "images" / name, quality=92)
        images.append({"id": index, "file_name": name, "height": height, "width": width})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": name} for c, name in categories.items()]}  # fmt: skip
    (folder / "ann.json").write_text(json.dumps(coco))
    spec = folder / "data.yaml"
    split = "{annotations: ann.json, images: images/}"
    spec.write_text(f"format: coco\ntrain: {split}\nval: {split}\n")
    return spec


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> Path:
    """Ordinary photo sizes, 400-1000 px, two of COCO's classes (so that torchvision's r50 can be evaluated)."""
    sizes = [(400, 600), (750, 1000), (480, 640), (1000, 667), (533, 800), (640, 640)]
    return write_coco(tmp_path_factory.mktemp("coco"), sizes, {1: "person", 3: "car"}, seed=5)


def test_eval_with_torchvisions_r50(r50, photo_data, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    assert fpn("eval", "--weights", r50, "--data", photo_data, "--output", output) == 0
    metrics = json.loads(output.read_text())
    assert "AP" in metrics["metrics"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("flags", [[], ["--precision", "bf16"], ["--exact"]], ids=["default", "bf16", "exact"])
def test_bench_with_torchvisions_r50_at_800_px(r50, tmp_path, flags):
    output = tmp_path / "bench.json"
    code = fpn("bench", "--weights", r50, "--size", "800x1216", "--runs", 1, "--warmup", 0, "--no-memory",
               "--peak-gflops", 100, "--output", output, *flags)  # fmt: skip
    assert code == 0
    record = json.loads(output.read_text())
    assert record["size"] in ("800x1216", [800, 1216]) and record["median_s"] > 0


@pytest.fixture(scope="module")
def trained(photo_data, tmp_path_factory) -> Path:
    """``fpn train`` with its default preset (tiny-fpn) on the photo set, as a user starts."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert fpn("train", "--data", photo_data, "--iters", 12, "--out", out) == 0
    return out


def test_train_then_eval_on_photo_sizes(trained, photo_data, tmp_path):
    assert (trained / "model.pt").is_file()
    output = tmp_path / "metrics.json"
    assert fpn("eval", "--weights", trained / "model.pt", "--data", photo_data, "--output", output) == 0
    assert "AP" in json.loads(output.read_text())["metrics"]


MODES = {"default": [], "direct-conv": ["--direct-conv"], "bf16": ["--precision", "bf16"]}


def detect_in_modes(weights: Path, images: Path, out: Path, modes: list[str]) -> dict[str, dict[str, list[dict]]]:
    """``fpn detect`` of ``images`` with each of ``modes`` (keys of ``MODES``), every detection kept."""
    results = {}
    for name in modes:
        path = out / f"{name}.json"
        code = fpn("detect", images, "--weights", weights, "--output", path, "--score-thresh", 0, *MODES[name])
        assert code == 0
        results[name] = read_detections(path)
    return results


def assert_fast_equals_plain(fast: dict[str, list[dict]], plain: dict[str, list[dict]]) -> None:
    assert fast.keys() == plain.keys()
    for key in fast:
        assert_same_detections(as_tensors(fast[key]), as_tensors(plain[key]), JSON_BOX_TOL, JSON_SCORE_TOL)


def test_trained_model_detects_with_fast_and_plain_paths_alike(trained, photo_data, tmp_path):
    runs = detect_in_modes(trained / "model.pt", photo_data.parent / "images", tmp_path, list(MODES))
    assert len(runs["default"]) == 6
    assert_fast_equals_plain(runs["default"], runs["direct-conv"])
    assert len(runs["bf16"]) == 6


def test_anchors_on_the_photo_set(trained, photo_data, tmp_path):
    out = tmp_path / "anchors.png"
    assert fpn("anchors", "--data", photo_data, "--weights", trained / "model.pt", "--out", out) == 0
    assert out.is_file()


def test_nano_preset_trains_and_detects_on_photo_sizes(photo_data, tmp_path):
    """``nano-fpn`` (the 48-channel preset of YOLOv8n's latency class) as a user runs it: train, then detect on
    the 400-1000 px photos, the optimized path against direct convolutions."""
    out = tmp_path / "nano"
    assert fpn("train", "--data", photo_data, "--model", "nano-fpn", "--iters", 6, "--out", out) == 0
    runs = detect_in_modes(out / "model.pt", photo_data.parent / "images", tmp_path, ["default", "direct-conv"])
    assert len(runs["default"]) == 6
    assert sum(len(records) for records in runs["default"].values()) > 0
    assert_fast_equals_plain(runs["default"], runs["direct-conv"])
