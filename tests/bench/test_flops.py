"""``fpn.bench.flops``: FLOP counts of a matrix product and of a detector's forward pass."""

import torch

from fpn.bench import count_gflops, eval_size, forward_gflops
from fpn.detection import FasterRCNN
from fpn.presets import preset


def test_gflops_of_a_matmul_and_of_a_detector_forward():
    a, b = torch.ones(64, 128), torch.ones(128, 32)
    assert count_gflops(lambda: a @ b) == 2 * 64 * 128 * 32 / 1e9
    config = preset("micro-fpn")
    config.class_names = ["a"]
    model = FasterRCNN(config).train()
    image = torch.rand(3, *eval_size(config))
    assert forward_gflops(model, image) > 0
    assert model.training  # the mode is restored
