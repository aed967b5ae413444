"""The input transform: resize rule, padding to the coarsest stride, boxes there and back, multi-scale choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fpn.config import TransformConfig
from fpn.data.images import pil_to_tensor
from fpn.detection import FasterRCNN
from fpn.detection.transform import DetectionTransform, resize_boxes
from fpn.errors import ImageError
from fpn.presets import preset


def make_transform(min_size=(128,), max_size=192, size_divisible=32) -> DetectionTransform:
    return DetectionTransform(TransformConfig(min_size=list(min_size), max_size=max_size), size_divisible)


def expected_size(h: int, w: int, shorter: int, longest: int) -> tuple[int, int]:
    scale = min(shorter / min(h, w), longest / max(h, w))
    return math.floor(h * scale), math.floor(w * scale)


@pytest.mark.parametrize(
    ("size", "resized"),
    [
        ((120, 150), (128, 160)),  # shorter side to 128, longer side stays under 192
        ((150, 120), (160, 128)),  # portrait
        ((128, 128), (128, 128)),  # already the right size
        ((64, 64), (128, 128)),  # small images are enlarged
        ((100, 200), (96, 192)),  # longer side capped at 192, so the shorter side ends below 128
        ((300, 40), (192, 25)),  # very elongated: the cap decides
        ((99, 151), (125, 192)),  # odd sizes, capped
        ((37, 53), (128, 183)),  # odd sizes, enlarged
        ((127, 129), (128, 130)),
    ],
)
def test_resize_rule(size, resized):
    transform = make_transform().eval()
    batch, _ = transform([torch.rand(3, *size)])
    assert batch.image_sizes == [resized]
    assert resized == expected_size(*size, 128, 192)
    h, w = resized
    assert min(h, w) <= 128 and max(h, w) <= 192
    assert min(h, w) == 128 or max(h, w) == 192  # one of the two limits is reached


@pytest.mark.parametrize("size_divisible", [4, 32, 64])
@pytest.mark.parametrize("size", [(120, 150), (99, 151), (37, 53), (128, 128)])
def test_padding_to_a_multiple_of_the_coarsest_stride_with_zeros(size, size_divisible):
    transform = make_transform(size_divisible=size_divisible).eval()
    image = torch.rand(3, *size) * 0.8 + 0.1  # never exactly the mean, so the content is never exactly 0
    batch, _ = transform([image])
    (h, w) = batch.image_sizes[0]
    _, _, ph, pw = batch.tensors.shape
    assert ph % size_divisible == 0 and pw % size_divisible == 0
    assert h <= ph < h + size_divisible and w <= pw < w + size_divisible
    assert torch.all(batch.tensors[0, :, h:, :] == 0)
    assert torch.all(batch.tensors[0, :, :, w:] == 0)
    assert torch.all(batch.tensors[0, :, :h, :w] != 0)


def test_batch_pads_every_image_to_the_largest_one():
    transform = make_transform(size_divisible=32).eval()
    batch, _ = transform([torch.rand(3, 120, 150), torch.rand(3, 150, 120), torch.rand(3, 100, 200)])
    assert batch.image_sizes == [(128, 160), (160, 128), (96, 192)]
    assert tuple(batch.tensors.shape) == (3, 3, 160, 192)
    assert torch.all(batch.tensors[1, :, :, 128:] == 0)
    assert torch.all(batch.tensors[2, :, 96:, :] == 0)


def test_images_are_normalised_with_mean_and_std():
    transform = make_transform(min_size=(64,), max_size=64).eval()
    image = torch.ones(3, 64, 64) * torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    batch, _ = transform([image])
    assert torch.allclose(batch.tensors, torch.zeros_like(batch.tensors), atol=1e-6)
    batch, _ = transform([torch.ones(3, 64, 64)])
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(batch.tensors[0, :, 10, 10], expected, atol=1e-5)


def test_images_must_be_three_channel():
    transform = make_transform().eval()
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        transform([torch.rand(1, 32, 32)])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        transform([torch.rand(32, 32)])
    with pytest.raises(ImageError, match=r"channels last\? use image.permute\(2, 0, 1\)"):
        transform([torch.rand(32, 40, 3)])


def photo(h: int = 37, w: int = 53, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uint8_tensors_and_pil_images_give_the_floats_pil_to_tensor_gives():
    transform = make_transform().eval()
    array = photo()
    expected, _ = transform([pil_to_tensor(Image.fromarray(array))])
    for image in (torch.from_numpy(array).permute(2, 0, 1), Image.fromarray(array)):
        batch, _ = transform([image])
        assert torch.equal(batch.tensors, expected.tensors), type(image)
        assert batch.original_sizes == [(37, 53)] and batch.image_sizes == expected.image_sizes
    # a grayscale PIL image goes through the same conversion (RGB)
    gray = Image.fromarray(array[..., 0], mode="L")
    assert torch.equal(transform([gray])[0].tensors, transform([pil_to_tensor(gray)])[0].tensors)


def test_float_input_is_left_alone():
    # The torchvision parity path: float 0..1 in, the same arithmetic as before, and the caller's tensor unchanged.
    transform = make_transform().eval()
    image = torch.rand(3, 40, 60)
    kept = image.clone()
    batch, _ = transform([image])
    assert torch.equal(image, kept)
    expected = F.interpolate(
        ((image - transform.mean) / transform.std)[None], scale_factor=128 / 40, mode="bilinear",
        recompute_scale_factor=True, align_corners=False,
    )[0]  # fmt: skip
    assert torch.equal(batch.tensors[0, :, :128, :192], expected)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([torch.linspace(0, 255, 1200).view(3, 20, 20)], "images must be float in 0..1 or uint8; got max 255"),
        ([torch.linspace(-0.25, 0.75, 1200).view(3, 20, 20)], "got min -0.25 (normalised already?)"),
        ([torch.full((3, 4, 4), float("nan"))], "NaN"),
        ([torch.randint(0, 255, (3, 20, 20))], "got torch.int64"),
        ([photo()], "got ndarray (an H x W x 3 uint8 array: torch.from_numpy"),
        ([[0.5] * 3], "got list"),
        (torch.rand(3, 20, 20), "a single one: pass [image]"),
        ([], "no images given"),
        ([torch.rand(3, 0, 20)], "at least 1x1 px"),
        ([torch.rand(3, 20, 20), torch.linspace(0, 255, 1200).view(3, 20, 20)], "images[1]: images must be float"),
    ],
    ids=["0-255 floats", "normalised", "nan", "int64", "numpy", "list", "no list", "empty", "0 px", "second"],
)
def test_other_inputs_are_refused_with_one_line(images, message):
    transform = make_transform().eval()
    with pytest.raises(ImageError) as exc:
        transform(images)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, ValueError)  # what a Python caller expects to catch


def test_an_image_too_thin_to_resize_is_refused_naming_its_size():
    transform = make_transform(min_size=(128,), max_size=192).eval()
    assert transform.resized_size((3, 2000), 128) == (0, 192)
    with pytest.raises(ImageError, match=r"2000x3 px image \(width x height\) is too thin .* 192x0 px"):
        transform([torch.rand(3, 3, 2000)])
    # at the limit: the thin side keeps 1 px and the image goes through
    batch, _ = transform([torch.rand(3, 11, 2000)])
    assert batch.image_sizes == [(1, 192)]
    # a 1x1 image is enlarged like any small image
    assert transform([torch.rand(3, 1, 1)])[0].image_sizes == [(128, 128)]


def test_multi_scale_training_checks_thinness_at_its_smallest_side():
    # Refused always or never, not by the draw: at shorter side 64 the 2000 px side is capped to 192 either way.
    transform = make_transform(min_size=(64, 192), max_size=192).train()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    with pytest.raises(ImageError, match="too thin"):
        transform([torch.rand(3, 10, 2000)], targets)
    with pytest.raises(ImageError, match="1 images but 2 targets"):
        transform([torch.rand(3, 40, 40)], targets * 2)


@pytest.fixture(scope="module")
def micro_model() -> FasterRCNN:
    torch.manual_seed(0)
    config = preset("micro-fpn")
    config.class_names = ["a", "b"]
    config.roi_heads.score_thresh = 0.0
    return FasterRCNN(config).eval()


def test_the_detector_takes_uint8_and_pil_and_refuses_0_255_floats(micro_model):
    array = photo(60, 80, seed=1)
    with torch.no_grad():
        expected = micro_model([pil_to_tensor(Image.fromarray(array))])[0]
        assert len(expected["boxes"]) > 0
        for image in (torch.from_numpy(array).permute(2, 0, 1), Image.fromarray(array)):
            got = micro_model([image])[0]
            assert all(torch.equal(got[k], expected[k]) for k in expected), type(image)
        with pytest.raises(ImageError, match="got max 25"):
            micro_model([torch.from_numpy(array).permute(2, 0, 1).float()])


@pytest.mark.parametrize("size", [(120, 150), (99, 151), (37, 53), (300, 40)])
def test_boxes_are_resized_with_the_image_and_mapped_back(size):
    transform = make_transform().eval()
    h, w = size
    boxes = torch.tensor([[0.0, 0.0, w, h], [w * 0.25, h * 0.1, w * 0.5, h * 0.9], [3.0, 5.0, 7.0, 11.0]])
    targets = [{"boxes": boxes.clone(), "labels": torch.tensor([1, 2, 1])}]
    transform.train()
    batch, new_targets = transform([torch.rand(3, h, w)], targets)
    rh, rw = batch.image_sizes[0]
    scale = torch.tensor([rw / w, rh / h, rw / w, rh / h])
    assert torch.allclose(new_targets[0]["boxes"], boxes * scale, atol=1e-4)
    # the full-image box becomes the full resized image
    assert torch.allclose(new_targets[0]["boxes"][0], torch.tensor([0.0, 0.0, rw, rh]), atol=1e-4)
    assert torch.equal(new_targets[0]["labels"], targets[0]["labels"])
    # the caller's targets are left alone
    assert torch.equal(targets[0]["boxes"], boxes)
    # postprocess maps detections in resized pixels back to the original image
    detections = [{"boxes": new_targets[0]["boxes"].clone(), "scores": torch.ones(3)}]
    back = DetectionTransform.postprocess(detections, batch.image_sizes, [size])
    assert torch.allclose(back[0]["boxes"], boxes, atol=1e-3)


def test_postprocess_handles_several_images_and_no_detections():
    detections = [
        {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]])},
        {"boxes": torch.zeros((0, 4))},
    ]
    out = DetectionTransform.postprocess(detections, [(100, 200), (50, 50)], [(50, 100), (100, 100)])
    assert torch.allclose(out[0]["boxes"], torch.tensor([[5.0, 10.0, 15.0, 20.0]]))
    assert out[1]["boxes"].shape == (0, 4)


def test_resize_boxes_scales_x_by_width_and_y_by_height():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 40.0]])
    assert torch.allclose(resize_boxes(boxes, (100, 50), (200, 25)), torch.tensor([[5.0, 20.0, 10.0, 80.0]]))


def test_eval_uses_the_last_min_size_and_shorter_overrides_it():
    transform = make_transform(min_size=(96, 112, 128), max_size=1000).eval()
    batch, _ = transform([torch.rand(3, 100, 150)])
    assert batch.image_sizes == [(128, 192)]
    batch, _ = transform([torch.rand(3, 100, 150)], shorter=64)
    assert batch.image_sizes == [(64, 96)]


def shorter_sides(transform: DetectionTransform, seed: int, count: int = 24) -> list[int]:
    transform.generator = torch.Generator().manual_seed(seed)
    sides = []
    for _ in range(count):
        batch, _ = transform([torch.rand(3, 40, 60)])
        sides.append(batch.image_sizes[0][0])
    return sides


def test_multi_scale_training_is_reproducible_with_a_seeded_generator():
    transform = make_transform(min_size=(64, 80, 96), max_size=1000).train()
    first = shorter_sides(transform, seed=3)
    torch.manual_seed(123)  # the global RNG plays no part once a generator is set
    second = shorter_sides(transform, seed=3)
    assert first == second
    assert set(first) <= {64, 80, 96}
    assert len(set(first)) > 1  # it does pick among the sizes
    assert shorter_sides(transform, seed=4) != first
    # in eval mode the choice is fixed: the last size
    transform.eval()
    assert set(shorter_sides(transform, seed=3, count=5)) == {96}


def test_multi_scale_training_follows_the_global_seed_without_a_generator():
    transform = make_transform(min_size=(64, 80, 96), max_size=1000).train()
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        sides = []
        for _ in range(16):
            batch, _ = transform([torch.rand(3, 40, 60)])
            sides.append(batch.image_sizes[0][0])
        runs.append(sides)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("design", ["fpn", "single-map", "finest-only", "hierarchy"])
def test_detector_pads_so_that_every_map_tiles_the_image(design):
    # Padding to the coarsest bottom-up stride (C5's 32, as torchvision) makes every C-map exactly padded / stride;
    # levels above it (P6) are subsampled with rounding up.
    config = preset("tiny-fpn", design=design)
    config.transform = TransformConfig(min_size=[100], max_size=150)
    model = FasterRCNN(config).eval()
    coarsest = model.backbone.levels[-1].stride
    assert model.transform.size_divisible % coarsest == 0
    batch, _ = model.transform([torch.rand(3, 100, 130)])
    ph, pw = batch.tensors.shape[-2:]
    with torch.no_grad():
        bottom_up, pyramid = model.features(batch.tensors)
    for name, feature in bottom_up.items():
        stride = 2 ** int(name[1:])
        assert tuple(feature.shape[-2:]) == (ph // stride, pw // stride), name
        assert ph % stride == 0 and pw % stride == 0
    for lv in model.levels:
        assert tuple(pyramid[lv.name].shape[-2:]) == (-(-ph // lv.stride), -(-pw // lv.stride)), lv.name


def test_an_image_at_the_model_size_is_neither_resized_nor_padded_and_matches_the_interpolated_path():
    """At scale 1 the resize is skipped and, on a padded size, so is the padding copy: the batch must equal what
    the bilinear resize and the zero padding would have made (bilinear at scale 1 is the identity)."""
    transform = make_transform(min_size=(128,), max_size=192).eval()
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0))
    batch, _ = transform([image])
    normalised = (image - transform.mean) / transform.std
    interpolated = F.interpolate(
        normalised[None], scale_factor=1.0, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )
    assert batch.image_sizes == [(128, 160)]
    torch.testing.assert_close(batch.tensors, interpolated, rtol=0, atol=0)
    assert batch.tensors.is_contiguous()
    assert batch.tensors.data_ptr() != image.data_ptr()
    image[0, 0, 0] = 0.5  # the caller's image is not the batch: changing it leaves the batch as it was
    torch.testing.assert_close(batch.tensors, interpolated, rtol=0, atol=0)
