"""Corrupt images: left out up front with one warning, cached checks, skipped mid-run, ``strict`` errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from fpn.cli import main
from fpn.data import CocoDataset, VocDataset, VocSample, collate, load_dataset, strict_loading, write_coco, write_voc
from fpn.data import scan as scan_module
from fpn.errors import DataError

CATEGORIES = [{"id": 1, "name": "box"}]
GOOD = ("a.png", "b.png", "c.jpg")
SIZE = 64


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of the test's own, so that no test sees another's checks (or the user's)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FPN_CACHE", str(folder))
    return folder


def _picture(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _truncate(path: Path) -> None:
    """Keep the first half of the file: the header still reads, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _coco_set(root: Path) -> Path:
    """Three good images, a truncated PNG and an empty JPEG, one box each; returns the data YAML."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    names = [*GOOD, "truncated.png", "empty.jpg"]
    for seed, name in enumerate(names):
        _picture(images_dir / name, seed)
    _truncate(images_dir / "truncated.png")
    (images_dir / "empty.jpg").write_bytes(b"")
    images = [{"id": i + 1, "file_name": name, "width": SIZE, "height": SIZE} for i, name in enumerate(names)]
    annotations = [{"image_id": i + 1, "category_id": 1, "bbox": [8, 8, 32, 24]} for i in range(len(names))]
    write_coco(root / "train.json", images, annotations, CATEGORIES)
    spec = {"format": "coco", "train": {"annotations": "train.json", "images": "images"}}
    (root / "data.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return root / "data.yaml"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fpn.data" and r.levelno == logging.WARNING]


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file the scan decodes (from its worker threads: list.append is atomic)."""
    calls: list[Path] = []
    real = scan_module.open_image

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(scan_module, "open_image", counting)
    return calls


def test_unreadable_images_are_left_out_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _coco_set(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        dataset = load_dataset(data, "train")
    assert [r.file_name for r in dataset.records] == list(GOOD)
    (warning,) = _warnings(caplog)
    assert "train.json: 2 of 5 images unreadable, left out" in warning and "\n" not in warning
    assert "truncated.png: corrupt or truncated image" in warning and "empty.jpg: not an image" in warning
    assert str(tmp_path / "images") not in warning  # names, not paths: the line stays readable
    assert len(dataset.coco_ground_truth()["images"]) == 3  # evaluation agrees with what is trained on


def test_the_second_load_uses_the_cache_and_a_changed_file_is_checked_again(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = _coco_set(tmp_path)
    decoded = _count_decodes(monkeypatch)
    load_dataset(data, "train")
    assert len(decoded) == 5 and len(list((cache / "image-checks").glob("*.json"))) == 1

    decoded.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        assert len(load_dataset(data, "train")) == 3
    assert decoded == [] and len(_warnings(caplog)) == 1  # cached failures are still reported

    # Repaired and damaged files are both noticed: the cache is keyed by size and modification time.
    _picture(tmp_path / "images" / "empty.jpg", 7)
    _truncate(tmp_path / "images" / "a.png")
    os.utime(tmp_path / "images" / "a.png", ns=(1, 1))
    dataset = load_dataset(data, "train")
    assert sorted(p.name for p in decoded) == ["a.png", "empty.jpg"]
    assert [r.file_name for r in dataset.records] == ["b.png", "c.jpg", "empty.jpg"]


def test_a_file_that_cannot_be_opened_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _coco_set(tmp_path)
    decoded = _count_decodes(monkeypatch)
    monkeypatch.setattr(scan_module.os, "access", lambda path, mode: Path(path).name != "empty.jpg")
    load_dataset(data, "train")
    decoded.clear()
    load_dataset(data, "train")  # a permission can be fixed without touching the file: look again
    assert [p.name for p in decoded] == ["empty.jpg"]


def test_a_cache_that_cannot_be_written_or_read_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _coco_set(tmp_path / "set")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FPN_CACHE", str(blocker))
    assert len(load_dataset(data, "train")) == 3

    monkeypatch.setenv("FPN_CACHE", str(tmp_path / "cache2"))
    load_dataset(data, "train")
    for path in (tmp_path / "cache2" / "image-checks").glob("*.json"):
        path.write_text("{not json")
    assert len(load_dataset(data, "train")) == 3


def test_strict_raises_one_line_naming_the_file(tmp_path: Path) -> None:
    data = _coco_set(tmp_path)
    with pytest.raises(DataError) as caught:
        load_dataset(data, "train", strict=True)
    message = str(caught.value)
    assert "truncated.png: corrupt or truncated image" in message and "2 of 5 images unreadable" in message
    assert "\n" not in message
    with strict_loading(), pytest.raises(DataError, match=r"truncated\.png"):
        load_dataset(data, "train")  # what `fpn train --strict` relies on
    with strict_loading():
        assert len(load_dataset(data, "train", strict=False)) == 3


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    images = [{"id": 1, "file_name": "empty.jpg", "width": SIZE, "height": SIZE}]
    path = write_coco(tmp_path / "train.json", images, [], CATEGORIES)
    with pytest.raises(DataError, match=r"empty\.jpg: .*1 of 1 images unreadable"):
        CocoDataset(path, tmp_path / "images")


def test_the_warning_names_a_few_files_then_counts_the_rest() -> None:
    problems = [(f"{i}.png", Path(f"/d/{i}.png"), f"/d/{i}.png: not an image") for i in range(5)]
    line = scan_module.unreadable_message("train.json", problems, 9)
    assert line == (
        "train.json: 5 of 9 images unreadable, left out: 0.png: not an image; 1.png: not an image; "
        "2.png: not an image; and 2 more"
    )


def test_an_image_broken_after_the_scan_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = load_dataset(_coco_set(tmp_path), "train")
    _truncate(tmp_path / "images" / "b.png")
    (tmp_path / "images" / "c.jpg").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        _, target = dataset[1]  # b.png, then c.jpg, are skipped: the next readable item is a.png
    assert target["file_name"] == "a.png"
    warnings = _warnings(caplog)
    assert len(warnings) == 2 and "b.png: corrupt or truncated" in warnings[0] and "c.jpg: no such" in warnings[1]
    assert dataset[0][1]["file_name"] == "a.png"
    with pytest.raises(IndexError):
        dataset[3]  # iteration still ends where it should

    # In DataLoader workers too: no traceback from another process, every batch delivered.
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=collate)
    assert [targets[0]["file_name"] for _, targets in loader] == ["a.png"] * 3

    dataset.strict = True
    with pytest.raises(DataError, match=r"b\.png"):
        dataset[1]
    (tmp_path / "images" / "a.png").unlink()
    dataset.strict = False
    with pytest.raises(DataError, match=r"none of its 3 images can be loaded"):
        dataset[0]


def test_voc_gets_the_same_treatment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples = [VocSample(stem, Image.new("RGB", (SIZE, SIZE), (i * 60, 0, 0)), [[4, 4, 20, 20]], [1]) for i, stem in
               enumerate(("0001", "0002", "0003"))]  # fmt: skip
    root = write_voc(tmp_path / "VOC", "train", samples, ["box"])
    _truncate(root / "JPEGImages" / "0002.jpg")
    (root / "JPEGImages" / "0003.jpg").write_bytes(b"")
    # No <size> for 0003: its size would come from the header, which cannot be read either.
    xml = root / "Annotations" / "0003.xml"
    xml.write_text(xml.read_text().replace(f"<width>{SIZE}</width>", "<width>0</width>"))
    with caplog.at_level(logging.WARNING, logger="fpn.data"):
        dataset = VocDataset(root, "train", ["box"])
    assert [r.file_name for r in dataset.records] == ["0001.jpg"]
    (warning,) = _warnings(caplog)
    assert "2 of 3 images unreadable" in warning and "0002.jpg" in warning and "0003.jpg" in warning
    with pytest.raises(DataError, match=r"0002\.jpg|0003\.jpg"):
        VocDataset(root, "train", ["box"], strict=True)


def test_fpn_train_leaves_them_out_and_strict_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _coco_set(tmp_path / "set")
    argv = ["train", "--data", str(data), "--model", "micro-fpn", "--iters", "2", "workers=0", "train.batch_size=1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and (tmp_path / "run" / "model.pt").is_file()

    assert main([*argv, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fpn: error:")]
    assert len(errors) == 1 and "truncated.png" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "strict").exists()
