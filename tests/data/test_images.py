"""Image loading: every mode becomes RGB in 0..1, EXIF orientation is applied, bad files give one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.data.images import image_size, list_images, load_image, pil_to_tensor, tensor_to_pil
from fpn.errors import DataError


def _check(image: torch.Tensor, height: int, width: int) -> None:
    assert image.dtype == torch.float32
    assert image.shape == (3, height, width)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    _check(image, 12, 20)
    assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(pixels))


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("L", 128, 128 / 255), ("RGBA", (10, 20, 30, 0), None), ("CMYK", (0, 0, 0, 0), 1.0), ("I;16", 65535, 1.0)],
)
def test_other_modes_become_rgb(tmp_path: Path, mode: str, value: object, expected: float | None) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"image{suffix}"
    Image.new(mode, (9, 7), value).save(path)
    image = load_image(path)
    _check(image, 7, 9)
    if expected is not None:
        assert torch.allclose(image, torch.full_like(image, expected), atol=2 / 255)
    if mode == "RGBA":  # alpha is dropped, the colour kept
        assert torch.allclose(image[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_palette_with_transparency(tmp_path: Path) -> None:
    palette_image = Image.new("P", (6, 5), 1)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "p.png", transparency=0)
    image = load_image(tmp_path / "p.png")
    _check(image, 5, 6)
    assert torch.allclose(image[:, 2, 3], torch.tensor([1.0, 0.0, 0.0]))


def test_exif_rotated_jpeg_is_loaded_as_displayed(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, left half red, right half blue; orientation 6 means "rotate 90 degrees
    # clockwise to display", so the displayed image is 20 wide x 40 high with red on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)

    assert image_size(path) == (40, 20)
    image = load_image(path)
    _check(image, 40, 20)
    assert image[0, 2].mean() > 0.8 and image[2, 2].mean() < 0.2  # top is red
    assert image[2, -3].mean() > 0.8 and image[0, -3].mean() < 0.2  # bottom is blue


def _one_line_error_naming(path: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        load_image(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return caught.value


def test_missing_corrupt_and_truncated_files(tmp_path: Path) -> None:
    assert "no such" in str(_one_line_error_naming(tmp_path / "missing.jpg"))

    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all" * 10)
    assert "not an image" in str(_one_line_error_naming(tmp_path / "junk.jpg"))

    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in str(_one_line_error_naming(tmp_path / "cut.png"))

    Image.fromarray(pixels).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    _one_line_error_naming(tmp_path / "cut.jpg")

    (tmp_path / "folder.png").mkdir()
    _one_line_error_naming(tmp_path / "folder.png")
    with pytest.raises(DataError, match=r"junk\.jpg"):
        image_size(tmp_path / "junk.jpg")


def test_tensor_pil_round_trip() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    image = pil_to_tensor(Image.fromarray(pixels))
    assert np.array_equal(np.asarray(tensor_to_pil(image)), pixels)


def test_list_images_files_folders_globs(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "c.TiFf", "d.webp", "notes.txt", "sub/e.jpeg"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "single.bmp").write_bytes(b"x")

    listed = list_images([folder])
    assert [p.name for p in listed] == ["a.png", "b.JPG", "c.TiFf", "d.webp"]  # sorted, not recursive
    assert [p.name for p in list_images(str(folder / "**" / "*"))] == [
        "a.png",
        "b.JPG",
        "c.TiFf",
        "d.webp",
        "e.jpeg",
    ]
    both = list_images([folder / "a.png", folder, tmp_path / "single.bmp"])
    assert len(both) == 5 and len(set(both)) == 5  # no duplicates
    assert both == sorted(both, key=str)


@pytest.mark.parametrize("source", ["nothing-here", "empty", "imgs/*.gif"])
def test_list_images_source_matching_nothing(tmp_path: Path, source: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / source))):
        list_images([tmp_path / "imgs", str(tmp_path / source)])


@pytest.mark.real
def test_aerial_sized_images_open(tmp_path):
    """16,384 px a side (268 million pixels) is above Pillow's default bomb limit; fpn's raised one lets it in."""
    path = tmp_path / "aerial.png"
    Image.new("RGB", (16_384, 16_384), (90, 120, 60)).save(path)
    assert image_size(path) == (16_384, 16_384)


def test_images_above_the_raised_limit_are_refused_in_one_line(tmp_path, monkeypatch):
    from fpn.data import images

    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300 x 300 is above twice this
    with pytest.raises(DataError, match="big.png: image is too large to decode safely"):
        images.open_image(path)
    assert images.MAX_IMAGE_PIXELS >= 400_000_000 // 2  # 20,000 px a side opens by default
