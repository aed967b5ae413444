"""Anchors: torchvision's cell-anchor formula, grid order, per-level size split, strides from sizes."""

from __future__ import annotations

import pytest
import torch

from fpn.detection.anchors import AnchorGenerator, cell_anchors, split_sizes
from fpn.errors import ModelBuildError
from fpn.levels import level

RATIOS = (0.5, 1.0, 2.0)

# Expected cell anchors for torchvision's default sizes (32, 64, 128, 256, 512) and ratios (0.5, 1, 2):
# h_ratio = sqrt(r), w_ratio = 1 / h_ratio, w = w_ratio * size, h = h_ratio * size, anchor = round([-w, -h, w, h] / 2).
# These numbers were checked once against torchvision 0.28's AnchorGenerator(((32,), ..., (512,)), ((0.5, 1, 2),) * 5)
# .cell_anchors in the reference venv (tools/reference); no torchvision is imported here.
TORCHVISION_CELLS = {
    32: [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],
    64: [[-45, -23, 45, 23], [-32, -32, 32, 32], [-23, -45, 23, 45]],
    128: [[-91, -45, 91, 45], [-64, -64, 64, 64], [-45, -91, 45, 91]],
    256: [[-181, -91, 181, 91], [-128, -128, 128, 128], [-91, -181, 91, 181]],
    512: [[-362, -181, 362, 181], [-256, -256, 256, 256], [-181, -362, 181, 362]],
}
# Two sizes on one level: torchvision orders them ratio-major (ratio 0.5 for every size, then ratio 1, ...).
# Checked against AnchorGenerator(((16, 32),), ((0.5, 1, 2),)).cell_anchors[0] in the reference venv.
TORCHVISION_CELLS_16_32 = [
    [-11, -6, 11, 6],
    [-23, -11, 23, 11],
    [-8, -8, 8, 8],
    [-16, -16, 16, 16],
    [-6, -11, 6, 11],
    [-11, -23, 11, 23],
]


def p_levels(*indices: int, channels: int = 8):
    return [level(f"p{k}", channels) for k in indices]


@pytest.mark.parametrize("size", sorted(TORCHVISION_CELLS))
def test_cell_anchors_match_torchvision_formula(size):
    got = cell_anchors([size], RATIOS)
    assert got.dtype == torch.float32
    assert got.tolist() == TORCHVISION_CELLS[size]


def test_cell_anchors_several_sizes_are_ratio_major():
    assert cell_anchors([16, 32], RATIOS).tolist() == TORCHVISION_CELLS_16_32


def test_cell_anchors_keep_area_and_aspect_ratio():
    anchors = cell_anchors([100], RATIOS)
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    # aspect ratio is h / w; area is size^2, up to the rounding to whole pixels
    assert torch.allclose(h / w, torch.tensor(RATIOS), rtol=0.03)
    assert torch.allclose(w * h, torch.full((3,), 100.0**2), rtol=0.03)
    # centred on (0, 0)
    assert torch.equal(anchors[:, 0], -anchors[:, 2]) and torch.equal(anchors[:, 1], -anchors[:, 3])


def test_default_generator_puts_one_torchvision_size_per_level():
    gen = AnchorGenerator(p_levels(2, 3, 4, 5, 6), [32, 64, 128, 256, 512], RATIOS)
    assert gen.num_anchors == 3
    assert gen.describe() == {"p2": (32,), "p3": (64,), "p4": (128,), "p5": (256,), "p6": (512,)}
    for name, size in zip(["p2", "p3", "p4", "p5", "p6"], [32, 64, 128, 256, 512]):
        assert gen._cells[name].tolist() == TORCHVISION_CELLS[size]


def test_grid_is_cell_major_then_anchor():
    gen = AnchorGenerator(p_levels(3), [32], RATIOS)
    h, w, stride = 3, 4, 8
    anchors, counts = gen((h * stride, w * stride), {"p3": (h, w)})
    assert counts == [h * w * 3]
    assert anchors.shape == (h * w * 3, 4)
    cells = torch.tensor(TORCHVISION_CELLS[32], dtype=torch.float32)
    for y in range(h):
        for x in range(w):
            for a in range(3):
                index = (y * w + x) * 3 + a  # row-major over cells, then the cell's anchors
                shift = torch.tensor([x * stride, y * stride, x * stride, y * stride], dtype=torch.float32)
                assert torch.equal(anchors[index], cells[a] + shift), (y, x, a)


def test_grid_matches_torchvision_on_two_levels():
    # torchvision's AnchorGenerator(((32,), (64,)), ((0.5, 1, 2),) * 2) on a padded 64x96 image with maps 4x3 and 2x3
    # (strides 16 x 32 and 32 x 32), values checked once in the reference venv.
    gen = AnchorGenerator(p_levels(4, 5), [32, 64], RATIOS)
    anchors, counts = gen((64, 96), {"p4": (4, 3), "p5": (2, 3)})
    assert counts == [36, 18]
    assert anchors[:12].tolist() == [
        [-23, -11, 23, 11],
        [-16, -16, 16, 16],
        [-11, -23, 11, 23],
        [9, -11, 55, 11],
        [16, -16, 48, 16],
        [21, -23, 43, 23],
        [41, -11, 87, 11],
        [48, -16, 80, 16],
        [53, -23, 75, 23],
        [-23, 5, 23, 27],
        [-16, 0, 16, 32],
        [-11, -7, 11, 39],
    ]
    assert anchors[36:].tolist() == [
        [-45, -23, 45, 23],
        [-32, -32, 32, 32],
        [-23, -45, 23, 45],
        [-13, -23, 77, 23],
        [0, -32, 64, 32],
        [9, -45, 55, 45],
        [19, -23, 109, 23],
        [32, -32, 96, 32],
        [41, -45, 87, 45],
        [-45, 9, 45, 55],
        [-32, 0, 32, 64],
        [-23, -13, 23, 77],
        [-13, 9, 77, 55],
        [0, 0, 64, 64],
        [9, -13, 55, 77],
        [19, 9, 109, 55],
        [32, 0, 96, 64],
        [41, -13, 87, 77],
    ]


def test_levels_are_concatenated_fine_to_coarse():
    gen = AnchorGenerator(p_levels(2, 3), [32, 64], RATIOS)
    anchors, counts = gen((32, 32), {"p2": (8, 8), "p3": (4, 4)})
    assert counts == [8 * 8 * 3, 4 * 4 * 3]
    first, second = anchors.split(counts)
    assert torch.equal(first[:3], cell_anchors([32], RATIOS))
    assert torch.equal(second[:3], cell_anchors([64], RATIOS))
    # the last anchor of each level sits on the last cell
    assert torch.equal(first[-1], cell_anchors([32], RATIOS)[-1] + torch.tensor([28.0, 28.0, 28.0, 28.0]))
    assert torch.equal(second[-1], cell_anchors([64], RATIOS)[-1] + torch.tensor([24.0, 24.0, 24.0, 24.0]))


@pytest.mark.parametrize(
    ("image_size", "feature_size", "stride_y", "stride_x"),
    [
        ((128, 192), (16, 24), 8, 8),  # the declared stride of p3
        ((64, 96), (4, 3), 16, 32),  # different strides along y and x, read from the sizes
        ((100, 100), (7, 7), 14, 14),  # floor division, as torchvision
    ],
)
def test_strides_are_read_from_image_and_feature_sizes(image_size, feature_size, stride_y, stride_x):
    gen = AnchorGenerator(p_levels(3), [32], RATIOS)
    anchors, _ = gen(image_size, {"p3": feature_size})
    h, w = feature_size
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).view(h, w, 3, 2)
    xs = centres[0, :, 0, 0]
    ys = centres[:, 0, 0, 1]
    assert torch.equal(xs, torch.arange(w, dtype=torch.float32) * stride_x)
    assert torch.equal(ys, torch.arange(h, dtype=torch.float32) * stride_y)


def test_anchors_follow_the_requested_device():
    gen = AnchorGenerator(p_levels(3), [32], RATIOS)
    anchors, _ = gen((16, 16), {"p3": (2, 2)}, device=torch.device("cpu"))
    assert anchors.device.type == "cpu"


# ------------------------------------------------------------------------------------------ size split


def test_five_sizes_on_five_levels_one_each():
    levels = p_levels(2, 3, 4, 5, 6)
    assert split_sizes(levels, [32, 64, 128, 256, 512]) == {
        "p2": (32,),
        "p3": (64,),
        "p4": (128,),
        "p5": (256,),
        "p6": (512,),
    }


def test_split_sorts_sizes_small_on_fine_levels():
    levels = p_levels(2, 3, 4, 5, 6)
    assert split_sizes(levels, [512, 32, 256, 64, 128]) == split_sizes(levels, [32, 64, 128, 256, 512])


def test_five_sizes_on_one_level_all_together():
    gen = AnchorGenerator(p_levels(5), [16, 32, 64, 128, 256], RATIOS)
    assert gen.describe() == {"p5": (16, 32, 64, 128, 256)}
    assert gen.num_anchors == 15
    anchors, counts = gen((64, 64), {"p5": (2, 2)})
    assert counts == [2 * 2 * 15]
    assert torch.equal(anchors[:15], cell_anchors([16, 32, 64, 128, 256], RATIOS))


def test_ten_sizes_on_five_levels_two_each():
    sizes = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
    gen = AnchorGenerator(p_levels(2, 3, 4, 5, 6), sizes, RATIOS)
    assert gen.describe() == {
        "p2": (16, 24),
        "p3": (32, 48),
        "p4": (64, 96),
        "p5": (128, 192),
        "p6": (256, 384),
    }
    assert gen.num_anchors == 6
    anchors, counts = gen((64, 64), {"p2": (16, 16), "p3": (8, 8), "p4": (4, 4), "p5": (2, 2), "p6": (1, 1)})
    assert counts == [16 * 16 * 6, 8 * 8 * 6, 4 * 4 * 6, 2 * 2 * 6, 6]
    assert len(anchors) == sum(counts)


@pytest.mark.parametrize(("num_levels", "num_sizes"), [(5, 3), (5, 7), (2, 5), (4, 5)])
def test_uneven_split_is_a_model_build_error(num_levels, num_sizes):
    levels = p_levels(*range(2, 2 + num_levels))
    sizes = [16 * 2**i for i in range(num_sizes)]
    with pytest.raises(ModelBuildError) as info:
        AnchorGenerator(levels, sizes, RATIOS)
    message = str(info.value)
    assert f"{num_sizes} anchor sizes" in message
    assert f"{num_levels} levels" in message
    assert "p2" in message  # names the levels
    assert f"multiple of {num_levels}" in message  # and says what would work
    assert "\n" not in message


def test_generator_checks_the_level_chain():
    # p2 then p4: strides do not double, the anchor generator refuses at build time
    with pytest.raises(ModelBuildError, match="anchor generator"):
        AnchorGenerator([level("p2", 8), level("p4", 8)], [32, 64], RATIOS)


def test_cached_anchors_equal_fresh_ones_per_size():
    gen = AnchorGenerator(p_levels(2, 3), [32, 64], RATIOS)
    first, counts = gen((64, 96), {"p2": (16, 24), "p3": (8, 12)})
    again, counts_again = gen((64, 96), {"p2": (16, 24), "p3": (8, 12)})
    assert again is first and counts_again == counts  # served from the cache
    counts_again.append(0)  # the caller's list is its own
    assert gen((64, 96), {"p2": (16, 24), "p3": (8, 12)})[1] == counts
    other, other_counts = gen((32, 64), {"p2": (8, 16), "p3": (4, 8)})
    fresh = AnchorGenerator(p_levels(2, 3), [32, 64], RATIOS)
    assert torch.equal(other, fresh((32, 64), {"p2": (8, 16), "p3": (4, 8)})[0])
    assert other_counts == [8 * 16 * 3, 4 * 8 * 3]


def test_anchor_cache_is_bounded():
    gen = AnchorGenerator(p_levels(3), [32], RATIOS)
    for k in range(1, AnchorGenerator.CACHE_SIZE + 5):
        gen((8 * k, 8), {"p3": (k, 1)})
    assert len(gen._cache) == AnchorGenerator.CACHE_SIZE


def test_anchors_built_in_inference_mode_are_not_reused_under_autograd():
    gen = AnchorGenerator(p_levels(3), [32], RATIOS)
    with torch.inference_mode():
        inference = gen((16, 16), {"p3": (2, 2)})[0]
    anchors = gen((16, 16), {"p3": (2, 2)})[0]
    assert inference.is_inference() and not anchors.is_inference()
    assert torch.equal(anchors, inference)
