"""The shared measuring helpers: FLOP counts, resident-memory peaks, machine description."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from fpn.detection import FasterRCNN
from fpn.measure import count_gflops, eval_size, forward_gflops, machine_info
from fpn.presets import preset


def test_rss_peak_delta_sees_an_allocation():
    # In a fresh process, as bench and compare use it: a long-lived test worker may hold freed memory that
    # the allocator hands back without raising the resident set.
    code = (
        "import torch; from fpn.measure import rss_peak_delta_mb\n"
        "def allocate():\n    block = torch.ones(64 * 2**20 // 4)  # 64 MB, every page touched\n    del block\n"
        "print(*rss_peak_delta_mb(allocate))"
    )
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    peak_mb, method = out.split()
    assert method in ("rss_hwm_delta", "ru_maxrss_delta")
    if method == "rss_hwm_delta":
        assert float(peak_mb) >= 50


def test_gflops_of_a_matmul_and_of_a_detector_forward():
    a, b = torch.ones(64, 128), torch.ones(128, 32)
    assert count_gflops(lambda: a @ b) == 2 * 64 * 128 * 32 / 1e9
    config = preset("micro-fpn")
    config.class_names = ["a"]
    model = FasterRCNN(config).train()
    image = torch.rand(3, *eval_size(config))
    assert forward_gflops(model, image) > 0
    assert model.training  # the mode is restored


def test_machine_info_names_the_threads():
    info = machine_info(threads=3)
    assert info["threads"] == 3 and info["cores"] >= 1 and info["torch"] == torch.__version__
